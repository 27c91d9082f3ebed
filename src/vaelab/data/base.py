"""The batch path every datamodule shares.

Images travel as uint8 (N, C, H, W) and become floats in [0, 1] after they reach the device
(`on_after_batch_transfer`), where dynamic binarisation draws x ~ Bernoulli(pixel) per batch.
Datasets that fit in memory are `InMemoryImages`: a whole batch is one tensor index
(`__getitems__`), not a Python loop of per-item collation.
"""

import math

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vaelab.errors import ConfigError

BINARIZE_MODES = ("none", "dynamic", "static")


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns a batch."""
    return batch


class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) and integer labels (N, ...) held in memory."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4, (images.dtype, images.shape)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def split_indices(num_items: int, fractions: dict[str, float], seed: int) -> dict[str, Tensor]:
    """A seeded random partition of range(num_items) into named parts of the given fractions."""
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    names = list(fractions)
    for name in names[:-1]:
        count = math.floor(fractions[name] * num_items)
        parts[name] = order[start : start + count].sort().values
        start += count
    parts[names[-1]] = order[start:].sort().values
    return parts


def binarize(images: Tensor, seed: int) -> Tensor:
    """One fixed draw x ~ Bernoulli(pixel / 255), as uint8 0/255."""
    probabilities = images.float().div_(255)
    draw = torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(seed))
    return draw.to(torch.uint8).mul_(255)


class ImageDataModule(LightningDataModule):
    """Base class: subclasses set `image_shape` and `binary`, and build `self.datasets`."""

    image_shape: tuple[int, int, int]
    binary_data: bool = False  # the pixels are 0/1 before any binarisation

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        binarize: str = "none",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if binarize not in BINARIZE_MODES:
            raise ConfigError(f"data.binarize must be one of {BINARIZE_MODES}, got {binarize!r}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.binarize = binarize
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}

    @property
    def binary(self) -> bool:
        """Whether the model sees binary pixels."""
        return self.binary_data or self.binarize != "none"

    def load(self) -> dict[str, Dataset]:
        """The train, val and test datasets, yielding (uint8 image, label)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        datasets = self.load()
        if self.binarize != "none":
            # val and test are binarised once, so every evaluation sees the same data
            static = ("train", "val", "test") if self.binarize == "static" else ("val", "test")
            for offset, split in enumerate(static):
                data = datasets[split]
                assert isinstance(data, InMemoryImages), "binarisation needs in-memory images"
                images = binarize(data.images, self.seed + offset)
                datasets[split] = InMemoryImages(images, data.labels)
        self.datasets = datasets

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        batched = hasattr(dataset, "__getitems__")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=keep_batch if batched else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int):
        images, labels = batch
        x = images.float().div_(255)
        if self.binarize == "dynamic" and self.trainer is not None and self.trainer.training:
            x = torch.bernoulli(x)
        return x, labels

    def example_images(self, split: str, count: int) -> Tensor:
        """The first `count` images of a split as floats in [0, 1] (for image callbacks)."""
        self.setup()
        dataset = self.datasets[split]
        indices = list(range(min(count, len(dataset))))
        if hasattr(dataset, "__getitems__"):
            images = dataset.__getitems__(indices)[0]
        else:
            images = torch.stack([dataset[i][0] for i in indices])
        return images.float() / 255
