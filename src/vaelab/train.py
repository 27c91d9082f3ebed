"""Train one VAE from a composed Hydra config: config -> data + model -> Trainer -> run folder.

python train.py                                        # the default experiment (sprites)
python train.py model=conv_vae trainer.devices=4       # DDP on 4 GPUs
python train.py trainer.accelerator=cpu trainer.devices=2   # DDP, 2 CPU processes
python train.py -m model.kl_weight=1,4                 # a sweep, one run folder per job
"""

import json
import logging
import math
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab.config import print_config_tree, save_config
from vaelab.errors import VaelabError
from vaelab.loggers import make_loggers

log = logging.getLogger(__name__)


def user_error(error: BaseException) -> VaelabError | None:
    """The VaelabError behind an exception (Hydra wraps errors raised while instantiating)."""
    while error is not None:
        if isinstance(error, VaelabError):
            return error
        error = error.__cause__ or error.__context__
    return None


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule and the model, checked against each other."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, _convert_="all")
    model.likelihood.check_data(datamodule.binary)
    return datamodule, model


@rank_zero_only
def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def scalars(results: list[dict]) -> dict[str, float]:
    return {k: float(v) for result in results for k, v in result.items()}


def route_lightning_logs() -> None:
    """Send Lightning's messages through Hydra's handlers only (console and train.log), once."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; return the final metrics."""
    route_lightning_logs()
    output_dir = Path(cfg.paths.output_dir)
    print_config_tree(cfg)
    save_config(cfg, output_dir / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "highest"))
    datamodule, model = build(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = make_loggers(cfg.get("logger"), cfg.paths.log_dir)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        )
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    metrics.update(scalars(trainer.validate(model, datamodule=datamodule, ckpt_path=best)))
    if cfg.get("test", True):
        metrics.update(scalars(trainer.test(model, datamodule=datamodule, ckpt_path=best)))
    metrics["global_step"] = trainer.global_step
    write_metrics(output_dir / "metrics.json", {"status": "ok", "best_checkpoint": best, **metrics})
    return metrics


def one_line(error: BaseException) -> str:
    cause = user_error(error) or error
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if isinstance(cause, VaelabError) else f"{type(cause).__name__}: {text}"


def run(cfg: DictConfig) -> float:
    """The entry point train.py calls.

    A user error ends a single run with one line on stderr and exit code 1. In a multirun a
    failed job is recorded in its metrics.json (status "failed" and the reason) and the sweep
    goes on with the next job.
    """
    try:
        metrics = train(cfg)
    except Exception as error:
        reason = one_line(error)
        if in_multirun():
            log.exception(f"job failed: {reason}")
            write_metrics(
                Path(cfg.paths.output_dir) / "metrics.json", {"status": "failed", "error": reason}
            )
            return math.nan
        if user_error(error) is None:
            raise
        print(f"error: {reason}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        finish_wandb()
    return metrics.get(cfg.get("optimized_metric", "val/elbo"), math.nan)


def finish_wandb() -> None:
    """Close the W&B run, so the next job of a multirun starts its own."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
