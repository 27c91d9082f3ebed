"""The batch path every datamodule shares.

Images travel as uint8 (N, C, H, W) and become floats in [0, 1] after they reach the device
(`on_after_batch_transfer`), where dynamic binarisation draws x ~ Bernoulli(pixel) per batch.
Datasets that fit in memory are `InMemoryImages`: a whole batch is one tensor index
(`__getitems__`), not a Python loop of per-item collation. With `on_device` (the default) they
move to the GPU once, when training there, so a batch is sliced on the GPU with no copy per step.
"""

import math
from collections.abc import Callable, Iterator

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

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
        index = torch.as_tensor(indices).to(self.images.device, non_blocking=True)
        return self.images[index], self.labels[index]

    def to(self, device: torch.device) -> "InMemoryImages":
        return InMemoryImages(self.images.to(device), self.labels.to(device))


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


def draw_binary(probabilities: Tensor) -> Tensor:
    """x ~ Bernoulli(probabilities) as floats 0 and 1: a uniform draw below each probability (to
    2^-24), four times as fast as torch.bernoulli on a CPU (README, speed)."""
    return torch.rand_like(probabilities).lt_(probabilities)


def binarize(images: Tensor, seed: int) -> Tensor:
    """One fixed draw x ~ Bernoulli(pixel / 255), as uint8 0/255."""
    probabilities = images.float().div_(255)
    draw = torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(seed))
    return draw.to(torch.uint8).mul_(255)


class ShardShuffle(Sampler[int]):
    """This rank's share of a dataset, in a seeded order per epoch, that can resume mid-epoch.

    Training: a permutation seeded by (seed, epoch), cut to a multiple of world_size so every
    rank runs the same number of steps, rank r taking every world_size-th index from r, then to
    whole batches of `batch_size` (so that a model taking S steps a call, whose loader batches
    are S of them, drops what one step a call would drop).
    Evaluation: the dataset in order, split the same way without padding, so a metric averaged
    over ranks weighs every example exactly once. `start(epoch)` says how many of this rank's
    indices the epoch has already used (non-zero only right after resuming mid-epoch). Lightning
    must leave the sampler alone: the trainer configs set `use_distributed_sampler: false`.
    """

    def __init__(
        self,
        size: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool,
        start: Callable[[int], int],
        batch_size: int = 1,
    ) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.start = seed, shuffle, start
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.rank, self.size, self.world_size)
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + epoch)
        )
        return order[self.rank :: self.world_size][: len(self)]

    def __len__(self) -> int:
        """This rank's share; in training cut to a multiple of world_size, then to whole
        batches of `batch_size` (the last partial one dropped) when it holds more than one."""
        usable = self.size - self.size % self.world_size if self.shuffle else self.size
        size = len(range(self.rank, usable, self.world_size))
        if self.shuffle and size > self.batch_size:
            size -= size % self.batch_size
        return size

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch)[self.start(self.epoch) :].tolist())


class ImageDataModule(LightningDataModule):
    """Base class: subclasses set `image_shape` and `binary`, and build `self.datasets`."""

    image_shape: tuple[int, int, int]
    binary_data: bool = False  # the pixels are 0/1 before any binarisation
    single_objects: bool = False  # one object an image: the regularity check applies
    factor_sizes: tuple[int, ...] | None = None  # classes of each ground-truth factor, if known

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_device: bool = True,
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
        self.on_device = on_device
        self.binarize = binarize
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}
        self.progress = {"epoch": 0, "batches": 0}  # training batches taken in this epoch
        self.resume_from: dict[str, int] | None = None

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
                if split not in datasets:  # data.val_size=0: no val split
                    continue
                data = datasets[split]
                assert isinstance(data, InMemoryImages), "binarisation needs in-memory images"
                images = binarize(data.images, self.seed + offset)
                datasets[split] = InMemoryImages(images, data.labels)
        self.datasets = datasets

    def dataset_for(self, split: str) -> Dataset:
        """The split's dataset, moved once to the GPU the trainer runs on where `on_device`."""
        dataset, trainer = self.datasets[split], self.trainer
        if self.on_device and trainer is not None and isinstance(dataset, InMemoryImages):
            device = trainer.strategy.root_device
            if device.type == "cuda" and dataset.images.device != device:
                dataset = self.datasets[split] = dataset.to(device)
        return dataset

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset_for(split)
        trainer = self.trainer
        batch_size = self.batch_size * self.steps_per_call() if shuffle else self.eval_batch_size
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

        # only training resumes mid-epoch: an evaluation loader (whose epoch stays 0) skipping a
        # checkpoint of epoch 0's batches would see nothing, and take the skip from training
        def start(epoch: int) -> int:
            return self.batches_to_skip(epoch) * batch_size if shuffle else 0

        sampler = ShardShuffle(
            len(dataset),
            rank,
            world_size,
            self.seed,
            shuffle,
            start=start,
            batch_size=self.batch_size,
        )
        if shuffle and trainer is not None:
            # worker processes fetch ahead when the iterator is made, which Lightning does before
            # it sets the sampler's epoch: a resumed run's workers would draw epoch 0's order
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        on_gpu = isinstance(dataset, InMemoryImages) and dataset.images.is_cuda
        num_workers = 0 if on_gpu else self.num_workers  # workers cannot share CUDA tensors
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,  # in training whole batches of self.batch_size
            num_workers=num_workers,
            pin_memory=self.pin_memory and not on_gpu,
            persistent_workers=num_workers > 0,
            collate_fn=keep_batch if hasattr(dataset, "__getitems__") else None,
            # each new iterator draws its workers' base seed: from this generator, not from the
            # global stream, which a resumed run restores only after the first iterator is made
            generator=torch.Generator().manual_seed(self.seed),
        )

    def steps_per_call(self) -> int:
        """The optimizer steps the trained model takes per batch (`model.steps_per_call`): its
        training batches hold that many batches of `batch_size` (the epoch's last may hold
        fewer)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(module, "steps_per_call", 1)

    def batches_to_skip(self, epoch: int) -> int:
        """After resuming mid-epoch: the batches of `epoch` trained before the checkpoint."""
        if self.resume_from is None or self.resume_from["epoch"] != epoch:
            return 0
        batches, self.resume_from = self.resume_from["batches"], None
        return batches

    def state_dict(self) -> dict[str, int]:
        """Saved in checkpoints: a run resumed mid-epoch sees the rest of that epoch's batches."""
        return dict(self.progress)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_from = dict(state)
        self.progress = dict(state)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """The val split's batches; none (validation skipped) where there is no val split."""
        return self._loader("val", shuffle=False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int):
        images, labels = batch
        x = images.float().div_(255)
        if self.trainer is not None and self.trainer.training:
            epoch = self.trainer.current_epoch
            if self.progress["epoch"] != epoch:
                self.progress = {"epoch": epoch, "batches": 0}
            self.progress["batches"] += 1
            if self.binarize == "dynamic":
                x = draw_binary(x)
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
