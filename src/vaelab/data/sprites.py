"""Procedural sprites: a dSprites equivalent rendered on the fly, no download needed.

Factors and their values follow dSprites (Matthey et al. 2017):
shape (square, ellipse, heart), scale (6 values in [0.5, 1]), orientation (40 values in [0, 2 pi]),
posX and posY (32 values each in [0, 1]): 3 * 6 * 40 * 32 * 32 = 737,280 binary 64x64 images,
indexed in dSprites' order (posY fastest). An image is a pure function of its index.
"""

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vaelab.data.base import ImageDataModule, InMemoryImages, split_indices
from vaelab.errors import ConfigError

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_SPRITES = math.prod(FACTOR_SIZES)
SIDE = 64
HALF_SIZE = 0.125  # half the side of a scale-1 square, as a fraction of the image
MARGIN = 0.18  # positions 0 and 1 put the centre this far from the edge


def factor_values() -> list[Tensor]:
    """The value grid of each factor (shape is categorical: 0, 1, 2)."""
    return [
        torch.arange(3, dtype=torch.float64),
        torch.linspace(0.5, 1.0, 6, dtype=torch.float64),
        torch.linspace(0.0, 2 * math.pi, 40, dtype=torch.float64),
        torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
        torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
    ]


def index_to_classes(indices: Tensor) -> Tensor:
    """Factor classes (N, 5) of sprite indices, posY varying fastest."""
    classes = []
    remainder = indices.long()
    for size in reversed(FACTOR_SIZES):
        classes.append(remainder % size)
        remainder = remainder // size
    return torch.stack(classes[::-1], dim=-1)


def classes_to_index(classes: Tensor) -> Tensor:
    """Sprite indices of factor classes (N, 5): the inverse of `index_to_classes`."""
    index = torch.zeros(len(classes), dtype=torch.long)
    for k, size in enumerate(FACTOR_SIZES):
        index = index * size + classes[:, k].long()
    return index


def render(classes: Tensor) -> Tensor:
    """Binary images (N, 1, 64, 64) as uint8 0/255 for factor classes (N, 5)."""
    values = factor_values()
    scale, angle, pos_x, pos_y = (values[i][classes[:, i]].float() for i in range(1, 5))
    centres = (torch.arange(SIDE, dtype=torch.float32) + 0.5) / SIDE  # pixel centres in [0, 1]
    dx = centres.view(1, 1, SIDE) - (MARGIN + (1 - 2 * MARGIN) * pos_x).view(-1, 1, 1)
    dy = centres.view(1, SIDE, 1) - (MARGIN + (1 - 2 * MARGIN) * pos_y).view(-1, 1, 1)
    cos = (torch.cos(angle) / (HALF_SIZE * scale)).view(-1, 1, 1)
    sin = (torch.sin(angle) / (HALF_SIZE * scale)).view(-1, 1, 1)
    u = cos * dx + sin * dy  # sprite coordinates: the sprite rotated back upright, unit size
    v = cos * dy - sin * dx
    images = torch.empty(len(classes), SIDE, SIDE, dtype=torch.bool)
    for shape, inside in enumerate((_square, _ellipse, _heart)):
        rows = (classes[:, 0] == shape).nonzero().squeeze(1)
        if len(rows):
            images[rows] = inside(u[rows], v[rows])
    return images.unsqueeze(1).to(torch.uint8).mul_(255)


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 1


def _ellipse(u: Tensor, v: Tensor) -> Tensor:
    return (u / 1.3).square() + (v / 0.65).square() <= 1


def _heart(u: Tensor, v: Tensor) -> Tensor:
    """The heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, point down."""
    x, y = 1.15 * u, 0.12 - 1.15 * v
    x2, y2 = x * x, y * y
    r = x2 + y2 - 1
    return r * r * r <= x2 * y2 * y


class Sprites(Dataset):
    """The sprites at the given indices, rendered when asked: (uint8 image, factor classes)."""

    def __init__(self, indices: Tensor) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, classes = self.__getitems__([index])
        return images[0], classes[0]

    def __getitems__(self, positions: list[int]) -> tuple[Tensor, Tensor]:
        classes = index_to_classes(self.indices[torch.as_tensor(positions)])
        return render(classes), classes


class SpritesDataModule(ImageDataModule):
    """A seeded subset of `size` sprites (all 737,280 when null), split into train/val/test.

    With `in_memory` the subset is rendered once at set-up (size * 4 KiB); otherwise batches
    are rendered as they are drawn, in the DataLoader's workers.
    """

    image_shape = (1, SIDE, SIDE)
    binary_data = True
    single_objects = True
    factor_sizes = FACTOR_SIZES

    def __init__(
        self,
        size: int | None = 20_000,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        in_memory: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if size is not None and not 3 <= size <= self.num_items:
            raise ConfigError(f"data.size must be in [3, {self.num_items}] or null, got {size}")
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ConfigError("data.val_fraction and data.test_fraction must be in (0, 1), sum < 1")
        self.size = size
        self.fractions = {"val": val_fraction, "test": test_fraction, "train": 0.0}
        self.in_memory = in_memory

    num_items = NUM_SPRITES

    def subset(self) -> dict[str, Tensor]:
        """Indices of each split into the full factor grid."""
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(self.num_items, generator=generator)[: self.size].sort().values
        parts = split_indices(len(chosen), self.fractions, self.seed)
        return {split: chosen[positions] for split, positions in parts.items()}

    def dataset(self, indices: Tensor) -> Dataset:
        sprites = Sprites(indices)
        if not self.in_memory:
            return sprites
        return InMemoryImages(*render_in_chunks(sprites))

    def load(self) -> dict[str, Dataset]:
        return {split: self.dataset(indices) for split, indices in self.subset().items()}

    def images_of(self, classes: Tensor) -> Tensor:
        """uint8 images (N, 1, 64, 64) of any factor classes (N, 5), in or out of the subset."""
        return render(classes)


def render_in_chunks(sprites: Sprites, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    parts = [
        sprites.__getitems__(list(range(i, min(i + chunk, len(sprites)))))
        for i in range(0, len(sprites), chunk)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
