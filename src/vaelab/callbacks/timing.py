"""Wall time of training steps after a warm-up, for throughput figures without start-up costs."""

import json
import time
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Times the steps from the end of step `warmup_steps` to the end of step
    `trainer.max_steps`, and keeps the time in checkpoints (`checkpoint["callbacks"]["StepTimer"]`).

    The first steps of a new process pay one-off costs (allocations, kernel selection, CUDA's
    start-up) that a long run does not; `make bench` leaves them out of every way it times. The
    device is synchronised only at those two steps.
    """

    def __init__(self, warmup_steps: int = 10) -> None:
        self.warmup_steps = warmup_steps
        self.start: float | None = None
        self.start_step = 0
        self.seconds = 0.0
        self.steps = 0

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step  # with model.steps_per_call > 1 it moves on several a batch
        if self.start is None and step >= self.warmup_steps:
            synchronize(module.device)
            self.start, self.start_step = time.perf_counter(), step
        elif self.start is not None and 0 < trainer.max_steps <= step:
            synchronize(module.device)
            self.seconds = time.perf_counter() - self.start
            self.steps = step - self.start_step

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "steps": self.steps}


PHASES = ("forward", "backward", "optimizer", "between")


class StepPhases(Callback):
    """Where a training step's time goes, in seconds summed over the steps after
    `warmup_steps`, written as JSON to `path` when training ends (`make bench`'s breakdown):

    - forward: the batch's start to the backward pass (training_step: the model, the loss and
      its logging calls);
    - backward: the backward pass;
    - optimizer: the optimizer's update (Lightning's `on_before_optimizer_step` to the end of
      `optimizer.step`, a step post-hook);
    - between: the end of the update to the next batch's start: the callbacks' and the module's
      batch-end hooks, the loggers, the progress bar, fetching the next batch, Lightning's loop.

    Each phase's time is divided by the optimizer steps measured: with `model.steps_per_call`
    = S > 1 a batch's S steps share one `between`, and each step's forward starts where the
    previous update ended. On a GPU the device is synchronised at every mark, which slows the
    steps it measures.
    """

    def __init__(self, path: str, warmup_steps: int = 10) -> None:
        self.path = path
        self.warmup_steps = warmup_steps
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.counts = dict.fromkeys(PHASES, 0)
        self.marks: dict[str, float] = {}
        self.steps = 0  # optimizer steps taken; a phase counts once warmup_steps are done

    def mark(self, module: LightningModule, name: str) -> None:
        """Keep the time now, after the device's queued work, under `name`."""
        synchronize(module.device)
        self.marks[name] = time.perf_counter()

    def add(self, phase: str, start: str, end: str) -> None:
        """Count the time from mark `start` to mark `end`, past the warm-up."""
        if self.steps >= self.warmup_steps and start in self.marks:
            self.seconds[phase] += self.marks[end] - self.marks[start]
            self.counts[phase] += 1

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        def after_update(optimizer, args, kwargs) -> None:
            self.mark(module, "updated")
            self.add("optimizer", "update", "updated")
            self.steps += 1
            self.marks["start"] = self.marks["updated"]  # a batch's next step starts here

        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(after_update)

    def on_train_batch_start(self, trainer, module: LightningModule, batch, batch_idx) -> None:
        self.mark(module, "start")
        self.add("between", "updated", "start")

    def on_before_backward(self, trainer, module: LightningModule, loss) -> None:
        self.mark(module, "backward")
        self.add("forward", "start", "backward")

    def on_after_backward(self, trainer, module: LightningModule) -> None:
        self.mark(module, "backward_end")
        self.add("backward", "backward", "backward_end")

    def on_before_optimizer_step(self, trainer, module: LightningModule, optimizer) -> None:
        self.mark(module, "update")

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        if trainer.is_global_zero:
            steps = max(self.counts["optimizer"], 1)
            ms = {p: 1e3 * self.seconds[p] / steps for p in PHASES}
            Path(self.path).write_text(json.dumps({"ms_per_step": ms, "counts": self.counts}))
