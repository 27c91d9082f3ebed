"""Semi-supervised training data: a few labels kept, the rest of the training set unlabelled.

Each training batch is one tensor pair, so DDP sharding, exact resume and the batch path stay
those of every other datamodule: the sampler's B positions give B unlabelled images (label -1)
and, in front of them, `per_batch` labelled images chosen by those positions (the labelled set
at position mod its size). The positions are a seeded permutation per epoch and per rank, so
the labelled draws are too.
"""

import torch
from torch import Tensor

from vaelab.data.base import InMemoryImages
from vaelab.errors import ConfigError

UNLABELLED = -1


def labelled_count(batch_size: int, per_batch: int) -> int:
    """How many labelled images a training batch of `batch_size` starts with: `per_batch`, or
    half of a last batch with fewer than `per_batch` unlabelled images."""
    return min(per_batch, batch_size // 2)


def balanced_subset(labels: Tensor, num_labels: int, seed: int) -> Tensor:
    """Sorted indices of `num_labels` examples, the same number from each class, by seed."""
    classes = labels.unique()
    if num_labels % len(classes) or num_labels < len(classes):
        raise ConfigError(
            f"data.num_labels={num_labels} must be a positive multiple of the "
            f"{len(classes)} classes (balanced labels)"
        )
    generator = torch.Generator().manual_seed(seed)
    per_class = num_labels // len(classes)
    chosen = []
    for label in classes:
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class:
            raise ConfigError(f"class {int(label)} has only {len(members)} training images")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


class PartlyLabelled(InMemoryImages):
    """Training images whose labels are hidden but for `labelled`; batches as the module says."""

    def __init__(self, images: Tensor, labels: Tensor, labelled: Tensor, per_batch: int) -> None:
        super().__init__(images, labels)
        self.labelled, self.per_batch = labelled.to(images.device), per_batch

    @property
    def num_labels(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], torch.tensor(UNLABELLED)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        positions = torch.as_tensor(indices).to(self.images.device, non_blocking=True)
        picked = self.labelled[positions[: self.per_batch] % len(self.labelled)]
        unlabelled = torch.full_like(self.labels[positions], UNLABELLED)
        images = torch.cat([self.images[picked], self.images[positions]])
        return images, torch.cat([self.labels[picked], unlabelled])

    def to(self, device: torch.device) -> "PartlyLabelled":
        return PartlyLabelled(
            self.images.to(device), self.labels.to(device), self.labelled, self.per_batch
        )
