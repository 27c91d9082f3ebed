"""The decoded manifold and the code scatter of the LatentImages callback."""

import math
from statistics import NormalDist
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_SPRITES, make_cfg
from PIL import Image
from torch import Tensor, nn
from torch.distributions import Normal

from vaelab.callbacks.images import manifold, manifold_codes, scatter, scatter_axes
from vaelab.likelihoods import Bernoulli
from vaelab.train import train
from vaelab.vae import VAE

SCALES = torch.tensor([0.0, 2.0, 0.1, 3.0, 0.5])  # code mean_j = SCALES_j * (first pixel)
LOG_VARS = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0])  # dimension 0: constant mean, wide q


def test_manifold_codes_are_normal_quantiles_row_by_row():
    grid = 5
    codes = manifold_codes(grid)
    quantiles = [NormalDist().inv_cdf((k + 0.5) / grid) for k in range(grid)]
    assert codes.shape == (grid * grid, 2)
    for row in range(grid):
        for column in range(grid):
            z_0, z_1 = codes[row * grid + column].tolist()
            assert z_0 == pytest.approx(quantiles[column], abs=1e-5)  # grows along a row
            assert z_1 == pytest.approx(quantiles[grid - 1 - row], abs=1e-5)  # grows upwards


def test_manifold_tiles_the_decoded_codes_in_grid_order():
    def decode_mean(z: Tensor) -> Tensor:  # (N, 1, 2, 3): row 0 shows Phi(z_0), row 1 Phi(z_1)
        return Normal(0.0, 1.0).cdf(z)[:, None, :, None].expand(-1, 1, 2, 3)

    model = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    model.decode_mean = decode_mean
    grid = 4
    picture = manifold(model, grid)
    assert picture.shape == (3, 2 + grid * (2 + 2), 2 + grid * (3 + 2))  # 2-pixel padding
    for row in range(grid):
        for column in range(grid):
            top, left = 2 + row * 4, 2 + column * 5
            assert picture[0, top, left] == pytest.approx((column + 0.5) / grid, abs=1e-5)
            assert picture[0, top + 1, left] == pytest.approx((grid - row - 0.5) / grid, abs=1e-5)


class FixedEncoder(nn.Module):
    """q(z|x) with mean SCALES * (first pixel) and log-variance LOG_VARS."""

    def __init__(self, image_shape: tuple[int, ...], num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        mean = x.flatten(1)[:, :1] * SCALES
        return torch.cat([mean, LOG_VARS.expand_as(mean)], dim=-1)[:, : self.num_features]


def fixed_vae(stochastic: bool) -> VAE:
    def decoder(latent_dim: int, shape: tuple[int, ...]) -> nn.Module:
        return nn.Sequential(nn.Linear(latent_dim, math.prod(shape)), nn.Unflatten(1, shape))

    return VAE(FixedEncoder, decoder, Bernoulli(), (1, 2, 2), latent_dim=5, stochastic=stochastic)


@pytest.mark.parametrize(
    ("stochastic", "dims", "first_label"),
    [
        # KL_j = (mean_j^2 + exp(log_var_j) - 1 - log_var_j) / 2: dimension 0 (8.04), then 3
        (True, [0, 3], f"z_0 (KL {(math.exp(3) - 4) / 2:.2f} nats)"),
        # an autoencoder: code variance 9 var(x) of dimension 3, then 4 var(x) of dimension 1
        (False, [3, 1], "z_3 (variance"),
    ],
)
def test_scatter_plots_the_two_dimensions_of_highest_kl_or_variance(stochastic, dims, first_label):
    model = fixed_vae(stochastic)
    images = torch.rand(200, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    codes, chosen, axis_labels, title = scatter_axes(model, images)
    assert codes.shape == (200, 5) and chosen == dims
    assert axis_labels[0].startswith(first_label) and f"z_{dims[1]} (" in axis_labels[1]
    assert ("highest KL" if stochastic else "largest variance") in title
    picture = scatter(model, images, torch.arange(200) % 3)
    assert picture.shape == (3, 500, 500) and 0 <= picture.min() < picture.max() <= 1


@pytest.mark.parametrize("latent_dim", [2, 3])
def test_run_writes_the_manifold_of_a_2d_latent_and_the_scatter(latent_dim, tmp_path):
    train(make_cfg(tmp_path, [*TINY_SPRITES, "debug=fdr", f"model.latent_dim={latent_dim}"]))
    for prefix in ("", "test_"):
        with Image.open(tmp_path / "images" / f"{prefix}scatter.png") as picture:
            assert picture.size == (500, 500)
        written = (tmp_path / "images" / f"{prefix}manifold.png").exists()
        assert written == (latent_dim == 2)
    if latent_dim == 2:
        with Image.open(tmp_path / "images" / "manifold.png") as picture:
            assert picture.size == (2 + 20 * 66, 2 + 20 * 66)  # 20 x 20 sprites of 64 pixels
