"""Faults that must lose nothing: a NaN loss, pre-emption (SIGTERM), Ctrl-C, and exact resuming."""

import os
import random
import signal
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaelab.errors import VaelabError


class NonFiniteLossError(VaelabError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stop training when the loss is NaN or infinite, before a bad checkpoint is written.

    The check runs on the device every step and reads the flag on the host only every
    `check_every_n_steps` steps and before each validation (when checkpoints are written), so it
    costs no per-step synchronisation.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        step = trainer.global_step - 1  # the step whose loss this was (the optimizer has stepped)
        self.first_bad_step = torch.where(bad_now, step, self.first_bad_step)
        if trainer.global_step % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: Trainer, module: LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, module: LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        if self.first_bad_step is None or int(self.first_bad_step) < 0:
            return
        checkpoint = trainer.checkpoint_callback
        last_good = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint else ""
        resume = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint yet"
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at step {int(self.first_bad_step)}; "
            f"training stopped and {resume}: lower model.optimizer.lr or set "
            "trainer.gradient_clip_val, then resume with ckpt_path=<that checkpoint>"
        )


class CheckpointOnInterrupt(Callback):
    """On SIGTERM (a cluster pre-empting the job) or Ctrl-C, save `last.ckpt` and exit.

    The first Ctrl-C is turned into a SIGTERM, which Lightning handles after the current
    optimizer step, so the checkpoint holds a consistent state; a second Ctrl-C stops at once.
    Errors (a NaN loss, a bug) save nothing, so they cannot overwrite the last good checkpoint.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.path = os.path.join(dirpath, f"{filename}.ckpt")
        self.previous_handler: Any = None

    def on_fit_start(self, trainer: Trainer, module: LightningModule) -> None:
        self.previous_handler = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self.on_ctrl_c)

    def on_ctrl_c(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nCtrl-C: saving a checkpoint after this step (press again to stop at once)")
        os.kill(os.getpid(), signal.SIGTERM)

    def on_fit_end(self, trainer: Trainer, module: LightningModule) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)

    def on_exception(
        self, trainer: Trainer, module: LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(self.path)
        self.on_fit_end(trainer, module)


class RandomState(Callback):
    """Save the random generators in checkpoints and restore them when training resumes; give
    each DDP rank its own stream.

    They are restored at the start of training (after any sanity-check validation), so a run
    resumed mid-epoch draws the same noise and binarisations as one that never stopped. Under
    DDP every rank starts from the same seed (so the model starts the same everywhere); at the
    start of training each rank then reseeds with a seed drawn from that common stream plus its
    rank, so the ranks draw different noise for their shards. Checkpoints hold rank 0's
    generators: a resumed DDP run restores them on every rank and reseeds from them, so it goes
    on with new streams, the same in distribution but not bit for bit.
    """

    def __init__(self) -> None:
        self.restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "numpy_position": int(numpy_state[2]),
            "python": random.getstate()[1],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        if self.restored is not None:
            self.restore(self.restored)
            self.restored = None
        if trainer.world_size > 1:
            base = int(torch.randint(2**31 - trainer.world_size, ()))  # from the common seed
            seed_everything(base + trainer.global_rank, workers=True, verbose=False)

    @staticmethod
    def restore(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, state["numpy_position"], 0, 0.0))
        random.setstate((3, tuple(state["python"]), None))
