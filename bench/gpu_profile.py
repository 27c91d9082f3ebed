"""Epoch time of a preset on one GPU (or the CPU), and the share of it the GPU spends in kernels.

Trains the preset's model and data for --epochs epochs (training only: no validation, logger,
checkpoints or progress bar) and times each epoch. The last epoch runs under torch.profiler:
the kernel share is the time the GPU was busy with kernels and copies (the union of their
intervals) over the wall time of the previous, unprofiled epoch (the profiler slows the host, not
the kernels).

    python bench/gpu_profile.py bench_mlp_mnist data.root=../shared/data --epochs 3
"""

import argparse
import statistics
import time

import lightning as L
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench import compose_preset
from vaelab.callbacks.timing import synchronize
from vaelab.train import build


def busy_seconds(events: list) -> float:
    """Time the GPU ran kernels or copies: the union of their intervals (annotations left out)."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    )
    busy, end = 0, float("-inf")
    for start, stop in spans:
        busy += max(0, stop - max(start, end))
        end = max(end, stop)
    return busy / 1e6


class EpochClock(L.Callback):
    """Wall time of each training epoch; the last one profiled."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.seconds: list[float] = []
        self.kernel_seconds = 0.0
        self.profiler: profile | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epochs - 1:
            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.__enter__()
        synchronize(module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(module.device)
        self.seconds.append(time.perf_counter() - self.start)
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.kernel_seconds = busy_seconds(self.profiler.events())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="a preset in conf/experiment, e.g. bench_mlp_mnist")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=...")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the last is profiled")
    args = parser.parse_args()
    cfg = compose_preset(args.experiment, args.overrides)
    datamodule, model = build(cfg)
    clock = EpochClock(max(2, args.epochs))
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=clock.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[clock],
    )
    trainer.fit(model, datamodule)
    steps = trainer.global_step // clock.epochs
    samples = steps * cfg.data.batch_size
    unprofiled = clock.seconds[:-1]
    epoch = statistics.median(unprofiled[1:] or unprofiled)  # the first epoch warms up
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"{name}, torch {torch.__version__}, "
        f"lightning {L.__version__}: {args.experiment} {' '.join(args.overrides)}"
    )
    print(
        f"  epoch: {epoch:.2f} s ({steps} steps of {cfg.data.batch_size}, "
        f"{samples / epoch:.0f} samples/s); epochs "
        + ", ".join(f"{s:.2f}" for s in clock.seconds)
        + " s (first warms up, last profiled)"
    )
    print(
        f"  GPU kernels and copies: {clock.kernel_seconds:.2f} s of the profiled epoch, "
        f"{clock.kernel_seconds / clock.seconds[-2]:.0%} of an unprofiled epoch's wall time"
    )


if __name__ == "__main__":
    main()
