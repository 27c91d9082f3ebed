"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, held in memory as uint8 tensors.

The official training set is split into train and val by seed (`val_size` images for val); the
official test set is the test split. `val_size=0` is the papers' protocol (Burda et al. 2016
train on all 60,000 MNIST images): no val split, no validation, the last checkpoint is tested.
"""

import contextlib
import io
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets

from vaelab.data.base import ImageDataModule, InMemoryImages, split_indices
from vaelab.data.labels import PartlyLabelled, balanced_subset
from vaelab.errors import ConfigError, DatasetNotFoundError

FILES_HINT = {
    "MNIST": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "FashionMNIST": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "CIFAR10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
}


class TorchvisionDataModule(ImageDataModule):
    dataset_class: type[datasets.VisionDataset]

    def __init__(
        self,
        root: str,
        download: bool = True,
        val_size: int = 10_000,
        num_labels: int | None = None,
        labelled_per_batch: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0 (0: no validation), got {val_size}")
        if labelled_per_batch < 1:
            raise ConfigError(f"data.labelled_per_batch must be >= 1, got {labelled_per_batch}")
        self.root = Path(root)
        self.download = download
        self.val_size = val_size
        self.num_labels, self.labelled_per_batch = num_labels, labelled_per_batch

    def setup(self, stage: str | None = None) -> None:
        """The splits; with `num_labels`, the training split keeps that many labels, balanced
        over classes and chosen by seed from the training images only (vaelab.data.labels)."""
        if self.datasets:
            return
        super().setup(stage)
        if self.num_labels is not None:
            train = self.datasets["train"]
            labelled = balanced_subset(train.labels, self.num_labels, self.seed)
            self.datasets["train"] = PartlyLabelled(
                train.images, train.labels, labelled, self.labelled_per_batch
            )

    def read(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 images (N, C, H, W) and labels of the official train or test set."""
        name = self.dataset_class.__name__
        try:
            # torchvision prints each mirror it tries; the error below says all that matters
            with contextlib.redirect_stdout(io.StringIO()):
                dataset = self.dataset_class(str(self.root), train=train, download=self.download)
        except (RuntimeError, OSError) as error:
            tried = "could not be downloaded" if self.download else "data.download=false"
            raise DatasetNotFoundError(
                f"{name} not found under {self.root} ({tried}): put {FILES_HINT[name]} "
                f"under data.root={self.root}, or point data.root at a folder that has them"
            ) from error
        images = torch.as_tensor(dataset.data)
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(dataset.targets)

    def load(self) -> dict[str, InMemoryImages]:
        images, labels = self.read(train=True)
        if self.val_size >= len(images):
            raise ConfigError(f"data.val_size={self.val_size} leaves no training images")
        test = InMemoryImages(*self.read(train=False))
        if self.val_size == 0:  # the papers' protocol: train on the whole official training set
            return {"train": InMemoryImages(images, labels), "test": test}
        fraction = self.val_size / len(images)
        parts = split_indices(len(images), {"val": fraction, "train": 0.0}, self.seed)
        return {
            "train": InMemoryImages(images[parts["train"]], labels[parts["train"]]),
            "val": InMemoryImages(images[parts["val"]], labels[parts["val"]]),
            "test": test,
        }


class MNISTDataModule(TorchvisionDataModule):
    dataset_class = datasets.MNIST
    image_shape = (1, 28, 28)
    single_objects = True


class FashionMNISTDataModule(TorchvisionDataModule):
    dataset_class = datasets.FashionMNIST
    image_shape = (1, 28, 28)
    single_objects = True


class CIFAR10DataModule(TorchvisionDataModule):
    dataset_class = datasets.CIFAR10
    image_shape = (3, 32, 32)
