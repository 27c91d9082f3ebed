import numpy as np
import pytest
import torch

from vaelab.data.sprites import SpritesDataModule
from vaelab.plausibility import (
    count_objects,
    fitted_gaussian_samples,
    intensity_band,
    plausible,
    regularity,
)

SIDE = 16
BAND = (0.02, 0.2)  # mean intensities of sprite-like images on 16 x 16


def image(*boxes: tuple[int, int, int, int], value: float = 1.0) -> torch.Tensor:
    """A (1, SIDE, SIDE) black image with the boxes (top, left, bottom, right; exclusive) set."""
    picture = torch.zeros(1, SIDE, SIDE)
    for top, left, bottom, right in boxes:
        picture[:, top:bottom, left:right] = value
    return picture


SQUARE = image((4, 4, 8, 8))  # 16 pixels: mean 1/16
TWO_SQUARES = image((2, 2, 5, 5), (9, 9, 12, 12))  # 18 pixels
DIAGONAL = image((2, 2, 5, 5), (5, 5, 8, 8))  # corners (4, 4) and (5, 5) touch
EMPTY = image()
FULL = image((0, 0, SIDE, SIDE))
GREY = image((0, 0, SIDE, SIDE), value=0.4)


@pytest.mark.parametrize(
    ("picture", "objects", "is_plausible"),
    [
        (SQUARE, 1, True),
        (TWO_SQUARES, 2, False),
        (DIAGONAL, 1, True),  # 8-connectivity joins squares that touch at a corner
        (EMPTY, 0, False),
        (FULL, 1, False),  # one object, but far brighter than any sprite
        (GREY, 0, False),  # 0.4 is below the threshold 0.5 everywhere
    ],
)
def test_known_images(picture, objects, is_plausible):
    assert count_objects(picture[None]).tolist() == [objects]
    assert plausible(picture[None], BAND).tolist() == [is_plausible]


def test_channels_are_averaged_and_the_threshold_is_strict():
    rgb = torch.cat([SQUARE, SQUARE, torch.zeros_like(SQUARE)])  # mean 2/3 inside the square
    assert count_objects(rgb[None]).tolist() == [1]
    assert count_objects(rgb[None], threshold=0.7).tolist() == [0]
    assert count_objects((0.5 * SQUARE)[None]).tolist() == [0]  # > 0.5, not >=


def test_band_edges_are_inclusive():
    mean = float(SQUARE.mean())
    assert plausible(SQUARE[None], (mean, mean)).tolist() == [True]
    assert plausible(SQUARE[None], (mean + 1e-6, 1.0)).tolist() == [False]


def test_intensity_band_is_numpys_quantile_of_image_means():
    means = [0.0, 0.05, 0.1, 0.1, 0.12, 0.3, 0.33, 0.5, 0.9, 1.0, 0.07]
    images = torch.tensor(means, dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, 2, 3, 3)
    for low, high in [(0.01, 0.99), (0.1, 0.75), (0.0, 1.0)]:
        expected = np.quantile(means, [low, high])
        assert intensity_band(images, low, high) == pytest.approx(tuple(expected), abs=1e-12)


class StubModel(torch.nn.Module):
    """A 'model' whose code is the flattened image and whose E[x|z] is z reshaped (1, 1, n):
    `sample` hands out a fixed list of images, as a trained VAE's prior samples would."""

    def __init__(self, samples: torch.Tensor, stochastic: bool = True) -> None:
        super().__init__()
        self.samples, self.stochastic = samples, stochastic
        self.has_prior = stochastic
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def sample(self, num_samples: int, generator=None) -> torch.Tensor:
        return self.samples[:num_samples]

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, None, None, :]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x


class StubData:
    def __init__(self, val: torch.Tensor) -> None:
        self.images = self.datasets = {"val": val, "train": val, "test": val}
        self.single_objects = True

    def setup(self, stage: str | None = None) -> None:
        pass

    def example_images(self, split: str, count: int) -> torch.Tensor:
        return self.images[split][:count]


def test_regularity_of_a_stub_model_is_the_known_fractions():
    # reference: squares of 9 to 25 pixels, band ~ [9/256, 25/256]; 3 of the 8 samples pass
    val = torch.stack([image((2, 2, 2 + k, 2 + k)) for k in (3, 3, 4, 4, 5, 5)])
    samples = torch.stack(
        [SQUARE, DIAGONAL, TWO_SQUARES, EMPTY, FULL, GREY, 0.9 * SQUARE, image((0, 0, 1, 1))]
    )
    report = regularity(StubModel(samples), StubData(val), num_samples=8, seed=0)
    assert report == {
        "plausible_samples": 3 / 8,
        "plausible_reconstructions": 1.0,
        "plausible_data": 1.0,
        "squared_error": 0.0,
    }


def test_an_autoencoders_samples_come_from_the_gaussian_fitted_to_its_codes():
    generator = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.5])
    factor = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.3, 0.2, 0.5]])
    codes = mean + torch.randn(20_000, 3, generator=generator) @ factor.T
    model = StubModel(samples=torch.empty(0), stochastic=False)
    drawn = fitted_gaussian_samples(model, codes[:, None, None, :], 20_000, generator)
    drawn = drawn.flatten(1).double()
    fitted = codes.double()
    assert torch.allclose(drawn.mean(0), fitted.mean(0), atol=0.04)  # 4 standard errors
    assert torch.allclose(torch.cov(drawn.T), torch.cov(fitted.T), atol=0.06)


def test_real_sprites_are_plausible_against_their_own_band():
    data = SpritesDataModule(size=400, val_fraction=0.5, test_fraction=0.1)
    data.setup()
    sprites = data.example_images("val", 200)
    assert sprites.shape == (200, 1, 64, 64)
    assert (count_objects(sprites) == 1).all()
    assert plausible(sprites, intensity_band(sprites)).float().mean() >= 0.95
