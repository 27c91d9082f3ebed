"""Experiment loggers from config; W&B falls back to offline mode by itself."""

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"


def wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(wandb_host()) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_offline_reason() -> str | None:
    """Why W&B must run offline (no key, no network), or None when it can go online."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        return None  # the user chose; wandb.init honours WANDB_MODE itself
    if not has_wandb_key():
        return "no W&B API key (run `wandb login` or set WANDB_API_KEY)"
    if not reachable(wandb_host()):
        return f"{wandb_host()} cannot be reached"
    return None


def sweep_identity(log_dir: str) -> dict:
    """In a multirun: the W&B group (the sweep folder under log_dir), name and tags of a job."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra = HydraConfig.get()
    sweep_dir = Path(hydra.sweep.dir).resolve()
    try:
        group = str(sweep_dir.relative_to(Path(log_dir).resolve()))
    except ValueError:
        group = sweep_dir.name
    overrides = list(hydra.overrides.task)
    name = ",".join(overrides) or f"job{hydra.job.num}"
    return {"group": group, "name": name, "tags": [tag[:64] for tag in overrides]}


def wandb_config(cfg: DictConfig, log_dir: str) -> DictConfig:
    """The W&B logger's config with the sweep's group, name and tags, switched offline when the
    server cannot be reached."""
    identity = sweep_identity(log_dir)
    cfg = OmegaConf.merge(
        cfg,
        {
            "group": cfg.get("group") or identity.get("group"),
            "name": cfg.get("name") or identity.get("name"),
            "tags": [*(cfg.get("tags") or []), *identity.get("tags", [])],
        },
    )
    reason = None if cfg.get("offline", False) else wandb_offline_reason()
    if reason:
        cfg = OmegaConf.merge(cfg, {"offline": True, "log_model": False})
        rank_zero_info(
            f"W&B offline: {reason}; run files go to {cfg.save_dir}/wandb "
            "(upload later with `wandb sync`)"
        )
    return cfg


def make_loggers(logger_cfg: DictConfig | None, log_dir: str = "outputs") -> list[Logger]:
    """Instantiate every logger in the `logger` group, switching W&B offline when it must."""
    loggers = []
    for cfg in (logger_cfg or {}).values():
        if cfg.get("_target_") != WANDB_TARGET:
            loggers.append(instantiate(cfg))
            continue
        logger = instantiate(wandb_config(cfg, log_dir))
        # Lightning passes anonymous=None to wandb.init, which then warns that the setting is
        # deprecated: a line the user cannot act on. Leave the argument out.
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(logger)
    return loggers
