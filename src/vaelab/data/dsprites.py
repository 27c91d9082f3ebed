"""The official dSprites file (`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`)."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vaelab.data.base import InMemoryImages
from vaelab.data.sprites import SpritesDataModule
from vaelab.errors import DatasetNotFoundError


class DSpritesDataModule(SpritesDataModule):
    """Same factors, order, subset and splits as `data=sprites`, images read from the npz."""

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(in_memory=True, **kwargs)
        self.path = Path(path)

    def load(self) -> dict[str, Dataset]:
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"dSprites file not found at data.path={self.path}: download "
                "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (github.com/deepmind/"
                "dsprites-dataset) and set data.path to it, or use data=sprites (no file needed)"
            )
        with np.load(self.path) as archive:
            images, classes = archive["imgs"], archive["latents_classes"]
        if images.shape != (self.num_items, 64, 64):
            raise DatasetNotFoundError(
                f"{self.path} holds images of shape {images.shape}, "
                f"not dSprites' ({self.num_items}, 64, 64): download the file again"
            )
        splits = {}
        for split, indices in self.subset().items():
            chosen = indices.numpy()
            pixels = torch.from_numpy(images[chosen].astype(np.uint8) * 255).unsqueeze(1)
            factors = torch.from_numpy(classes[chosen, 1:].astype(np.int64))  # drop colour
            splits[split] = InMemoryImages(pixels, factors)
        return splits
