"""Subnormal floats on a CPU: flushed to zero (`flush_denormal`, the default) or kept (IEEE)."""

import logging

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def flush_subnormals(cfg: DictConfig) -> None:
    """As `cfg.flush_denormal` (default true) says, read and write floats below the smallest
    normal (1.2e-38 in float32, 2.2e-308 in float64) as zero on a CPU, or keep them. Call it
    before torch's first parallel op: its worker threads copy the setting when they start, and
    keep it. GPU kernels are not affected."""
    flush = bool(cfg.get("flush_denormal", True))
    if not torch.set_flush_denormal(flush) and flush:
        log.warning("flush_denormal: this CPU cannot flush subnormal floats; they are kept")
