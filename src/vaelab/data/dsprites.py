"""The official dSprites file (`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`)."""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vaelab.data.base import InMemoryImages
from vaelab.data.sprites import SpritesDataModule, classes_to_index
from vaelab.errors import DatasetNotFoundError


class DSpritesDataModule(SpritesDataModule):
    """Same factors, order, subset and splits as `data=sprites`, images read from the npz."""

    def __init__(self, path: str, **kwargs) -> None:
        kwargs.pop("in_memory", None)  # the file is read whole: always in memory (3 GB for all)
        super().__init__(in_memory=True, **kwargs)
        self.path = Path(path)
        self.lookup: tuple[np.ndarray, np.ndarray] | None = None  # for images_of: keys, images

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """The file's images (0/1) and factor classes (colour dropped)."""
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"dSprites file not found at data.path={self.path}: download "
                "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (github.com/deepmind/"
                "dsprites-dataset) and set data.path to it, or use data=sprites (no file needed)"
            )
        with np.load(self.path) as archive:
            images, classes = archive["imgs"], archive["latents_classes"][:, 1:]
        if images.shape != (self.num_items, 64, 64):
            raise DatasetNotFoundError(
                f"{self.path} holds images of shape {images.shape}, "
                f"not dSprites' ({self.num_items}, 64, 64): download the file again"
            )
        return images, classes.astype(np.int64)

    def load(self) -> dict[str, Dataset]:
        images, classes = self.read()
        splits = {}
        for split, indices in self.subset().items():
            chosen = indices.numpy()
            pixels = torch.from_numpy(images[chosen].astype(np.uint8) * 255).unsqueeze(1)
            splits[split] = InMemoryImages(pixels, torch.from_numpy(classes[chosen]))
        return splits

    def images_of(self, classes: Tensor) -> Tensor:
        """uint8 images (N, 1, 64, 64) of factor classes (N, 5), found by the file's own classes
        (the whole file stays in memory after the first call: 3 GB)."""
        if self.lookup is None:
            images, file_classes = self.read()
            keys = classes_to_index(torch.from_numpy(file_classes)).numpy()
            if np.any(np.diff(keys) < 0):  # the official file is in index order already
                order = np.argsort(keys, kind="stable")
                keys, images = keys[order], images[order]
            self.lookup = keys, images
        keys, images = self.lookup
        wanted = classes_to_index(classes).numpy()
        rows = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
        if not np.array_equal(keys[rows], wanted):
            raise DatasetNotFoundError(
                f"{self.path} lacks some factor combinations: download the file again"
            )
        return torch.from_numpy(images[rows].astype(np.uint8) * 255).unsqueeze(1)
