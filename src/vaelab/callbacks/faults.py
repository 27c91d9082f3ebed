"""Faults that must lose nothing: a NaN loss, pre-emption (SIGTERM), Ctrl-C, and exact resuming."""

import logging
import os
import pickle
import random
import signal
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaelab.errors import VaelabError

log = logging.getLogger(__name__)


class NonFiniteLossError(VaelabError):
    """The training loss became NaN or infinite."""


def saved_paths(callback: Callback) -> list[str]:
    """The checkpoint files a ModelCheckpoint has written and still keeps."""
    paths = (getattr(callback, name, "") for name in ("last_model_path", "best_model_path"))
    return [path for path in paths if path and os.path.isfile(path)]


def newest(path: str) -> tuple[float, bool]:
    """Sort key: the newest file, last.ckpt on a tie."""
    return os.path.getmtime(path), os.path.basename(path) == "last.ckpt"


class StopOnNonFiniteLoss(Callback):
    """Stop training when the loss is NaN or infinite, before a bad checkpoint is written.

    The check runs on the device every step and reads the flag on the host only every
    `check_every_n_steps` steps and before each validation (when checkpoints are written), so it
    costs no per-step synchronisation.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.first_bad_step: torch.Tensor | None = None
        self.checked_at = 0  # the global step of the last check after a batch

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        # the step whose loss this was; with model.steps_per_call > 1 the loss is the mean over
        # the batch's steps, and the step its last one
        step = trainer.global_step - 1
        self.first_bad_step = torch.where(bad_now, step, self.first_bad_step)
        if trainer.global_step - self.checked_at >= self.check_every_n_steps:
            self.checked_at = trainer.global_step
            self.check(trainer)

    def on_validation_start(self, trainer: Trainer, module: LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, module: LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        if self.first_bad_step is None or int(self.first_bad_step) < 0:
            return
        callbacks = trainer.checkpoint_callbacks
        saved = [path for callback in callbacks for path in saved_paths(callback)]
        last_good = max(saved, key=newest, default="")
        resume = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint yet"
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at step {int(self.first_bad_step)}; "
            f"training stopped and {resume}: lower model.optimizer.lr or set "
            "trainer.gradient_clip_val, then resume with ckpt_path=<that checkpoint>"
        )


def saved_step(path: str) -> int:
    """The global step of the checkpoint at `path`; -1 where there is none or it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError):
        return -1


class CheckpointOnInterrupt(Callback):
    """On SIGTERM (a cluster pre-empting the job) or Ctrl-C, save `last.ckpt` and exit. Also
    save it when training ends with `last.ckpt` older than its last step (`trainer.max_time` or
    `trainer.max_steps` between two of the checkpoint's epochs), so that `evaluate.py` sees the
    state the test after training saw. Resuming from such a mid-epoch end starts the next epoch
    (Lightning counts the stopped epoch as done): only a SIGTERM checkpoint resumes mid-epoch.

    The first Ctrl-C is turned into a SIGTERM, which Lightning handles after the current
    optimizer step, so the checkpoint holds a consistent state; a second Ctrl-C stops at once.
    Errors (a NaN loss, a bug) save nothing, so they cannot overwrite the last good checkpoint.

    Under DDP a signal reaches the ranks at different moments (often only rank 0), and Lightning's
    handler broadcasts from inside the signal handler, which can pair with another collective and
    hang. So from the start of training its handler here only takes note; after every training
    step the ranks agree whether any of them was signalled, then all stop after that same step and
    save together. A second Ctrl-C saves nothing under DDP: the ranks are not at one point.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.path = os.path.join(dirpath, f"{filename}.ckpt")
        self.previous_handler: Any = None
        self.signalled = False

    def on_fit_start(self, trainer: Trainer, module: LightningModule) -> None:
        self.signalled = False
        self.previous_handler = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self.on_ctrl_c)

    def on_ctrl_c(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nCtrl-C: saving a checkpoint after this step (press again to stop at once)")
        os.kill(os.getpid(), signal.SIGTERM)

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        if trainer.world_size > 1:  # Lightning restores its saved handlers when the fit ends
            signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(
            self.signalled, all=False
        ):
            trainer._signal_connector.received_sigterm = True  # Lightning stops after this step

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        if trainer.fast_dev_run:  # debug=fdr writes no checkpoint
            return
        stale = trainer.is_global_zero and saved_step(self.path) < trainer.global_step
        if trainer.strategy.broadcast(stale):  # rank 0's file decides for every rank
            trainer.save_checkpoint(self.path)

    def on_fit_end(self, trainer: Trainer, module: LightningModule) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)

    def on_exception(
        self, trainer: Trainer, module: LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) or (
            isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1
        ):
            trainer.save_checkpoint(self.path)
        self.on_fit_end(trainer, module)


class RandomState(Callback):
    """Save every rank's random generators in checkpoints and restore them when training resumes;
    give each DDP rank its own stream.

    They are restored at the start of training (after any sanity-check validation), so a run
    resumed mid-epoch draws the same noise and binarisations as one that never stopped, on every
    rank. Under DDP every rank starts from the same seed (so the model starts the same everywhere);
    at the start of a fresh training each rank then reseeds with a seed drawn from that common
    stream plus its rank, so the ranks draw different noise for their shards. A resumed run with
    the same number of processes gives each rank back its own generators and does not reseed. A
    checkpoint from another number of processes (or one from before every rank's generators were
    saved) restores rank 0's on every rank and reseeds them: the resumed run goes on with new
    streams, the same in distribution but not bit for bit.
    """

    def __init__(self) -> None:
        self.restored: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        if not (dist.is_available() and dist.is_initialized()):
            return {"ranks": [self.capture()]}
        # Trainer.save_checkpoint builds the checkpoint on every rank, then waits for all at a
        # barrier, so every rank is here together (CheckpointOnInterrupt keeps that so on signals)
        ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, self.capture())
        return {"ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state.get("ranks", [state])  # older checkpoints hold rank 0's only

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        saved, self.restored = self.restored, None
        if saved is not None and len(saved) == trainer.world_size:
            self.restore(saved[trainer.global_rank])
            return
        if saved is not None:
            self.restore(saved[0])
            if trainer.global_rank == 0:
                log.warning(
                    f"the checkpoint holds the random generators of {len(saved)} process(es) and "
                    f"this run has {trainer.world_size}: every rank starts from rank 0's, so the "
                    "resumed run is the same as one never stopped in distribution, not bit for bit"
                )
        if trainer.world_size > 1:
            base = int(torch.randint(2**31 - trainer.world_size, ()))  # from the common seed
            seed_everything(base + trainer.global_rank, workers=True, verbose=False)

    @staticmethod
    def capture() -> dict[str, Any]:
        """This process's generators."""
        numpy_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "numpy_position": int(numpy_state[2]),
            "python": random.getstate()[1],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if "PL_GLOBAL_SEED" in os.environ:  # DDP reseeds from it when validate or test start
            state["seed"] = int(os.environ["PL_GLOBAL_SEED"])
        return state

    @staticmethod
    def restore(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, state["numpy_position"], 0, 0.0))
        random.setstate((3, tuple(state["python"]), None))
        if "seed" in state:
            os.environ["PL_GLOBAL_SEED"] = str(state["seed"])
