"""Wall time of training steps after a warm-up, for throughput figures without start-up costs."""

import time

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
        self.seconds = 0.0
        self.steps = 0

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self.warmup_steps:
            synchronize(module.device)
            self.start = time.perf_counter()
        elif step == trainer.max_steps and self.start is not None:
            synchronize(module.device)
            self.seconds = time.perf_counter() - self.start
            self.steps = step - self.warmup_steps

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "steps": self.steps}
