"""Checks that run before any work, so a bad setting fails in seconds with one clear line."""

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vaelab.errors import ConfigError


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_output_dir(path: Path, min_free_mb: float) -> None:
    """ConfigError unless files can be written under `path` and its disk has min_free_mb free."""
    ancestor = existing_ancestor(path)
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is a file")
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            f"cannot write run outputs under {path} ({reason}): "
            "set paths.log_dir to a writable folder"
        ) from error
    free_mb = shutil.disk_usage(ancestor).free / 2**20
    if free_mb < min_free_mb:
        raise ConfigError(
            f"only {free_mb:.0f} MiB free on the disk of {path} (checkpoints and images need "
            f"{min_free_mb:.0f}): free some space or set paths.log_dir to another disk"
        )


class CheckOutputDir(Callback):
    """A Hydra callback: refuse to start a run or sweep whose output folder cannot be written."""

    def __init__(self, min_free_mb: float = 100) -> None:
        self.min_free_mb = min_free_mb

    def _check(self, folder: str) -> None:
        try:
            check_output_dir(Path(folder), self.min_free_mb)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)


def check_devices(trainer_cfg: DictConfig) -> None:
    """ConfigError when the Trainer asks for more devices than this machine has."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    devices = trainer_cfg.get("devices", "auto")
    wants_gpu = accelerator in ("gpu", "cuda")
    if wants_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no GPU is visible: "
            "use trainer.accelerator=cpu (or auto)"
        )
    if not isinstance(devices, int) or devices == -1:
        return  # "auto", -1 (all) and explicit device lists are Lightning's to check
    if devices < 1:
        raise ConfigError(f"trainer.devices must be a positive integer or -1, got {devices}")
    on_gpu = wants_gpu or (accelerator == "auto" and torch.cuda.is_available())
    available, kind = (
        (torch.cuda.device_count(), "GPUs") if on_gpu else (os.cpu_count(), "CPU cores")
    )
    if accelerator in ("gpu", "cuda", "cpu", "auto") and devices > available:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {available} {kind}: "
            f"use trainer.devices={available} or fewer"
        )


def check_trainer_for_steps_per_call(trainer_cfg: DictConfig, steps_per_call: int) -> None:
    """ConfigError for the Trainer settings that several optimizer steps a call cannot honour."""
    if steps_per_call == 1:
        return
    if trainer_cfg.get("gradient_clip_val"):
        raise ConfigError(
            "model.steps_per_call > 1 steps the optimizer in the model, where Lightning cannot "
            "clip gradients: set trainer.gradient_clip_val=null or model.steps_per_call=1"
        )
    if trainer_cfg.get("accumulate_grad_batches", 1) != 1:
        raise ConfigError(
            "model.steps_per_call > 1 takes a step on every batch it is given: set "
            "trainer.accumulate_grad_batches=1 or model.steps_per_call=1"
        )


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # of vaelab.vae.COMPILE_MODES


def check_trainer_for_compile_step(trainer_cfg: DictConfig, compile_step: str | None) -> None:
    """ConfigError for gradient accumulation with a step replayed as CUDA graphs, whose next
    replay would overwrite the gradients the last one left in the graph's memory."""
    if compile_step in CUDA_GRAPH_MODES and (trainer_cfg.get("accumulate_grad_batches", 1) != 1):
        raise ConfigError(
            f"model.compile_step={compile_step} replays the step as CUDA graphs, which cannot "
            "accumulate gradients: set trainer.accumulate_grad_batches=1 or "
            "model.compile_step=default"
        )
