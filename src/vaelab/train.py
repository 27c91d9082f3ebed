"""Train one VAE from a composed Hydra config: config -> data + model -> Trainer -> run folder.

python train.py                                        # the default experiment (sprites)
python train.py model=conv_vae trainer.devices=4       # DDP on 4 GPUs
python train.py trainer.accelerator=cpu trainer.devices=2   # DDP, 2 CPU processes
python train.py -m model.kl_weight=1,4                 # a sweep, one run folder per job
"""

import contextlib
import logging
import shutil
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from vaelab.checkpoints import check_checkpoint, check_steps_per_call, resolve_checkpoint
from vaelab.components import build
from vaelab.config import print_config_summary, print_config_tree, save_config, write_metrics
from vaelab.cuda_check import drop_nvml_check_without_gpu
from vaelab.disentanglement.report import check_factors
from vaelab.errors import ConfigError, VaelabError, user_error
from vaelab.evaluate import evaluate_after_test
from vaelab.loggers import make_loggers
from vaelab.preflight import (
    check_devices,
    check_trainer_for_compile_step,
    check_trainer_for_steps_per_call,
)
from vaelab.requeue import follow_requeue
from vaelab.subnormals import flush_subnormals

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, str | None]:
    """Everything a bad setting can break, checked before any training, logging or saving."""
    check_devices(cfg.trainer)
    datamodule, model = build(cfg)
    check_trainer_for_steps_per_call(cfg.trainer, getattr(model, "steps_per_call", 1))
    check_trainer_for_compile_step(cfg.trainer, getattr(model, "compile_step", None))
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), cfg.paths.log_dir)
    if ckpt_path:
        check_steps_per_call(check_checkpoint(ckpt_path, model), model)
    datamodule.setup()  # a missing dataset fails here, before W&B starts
    if getattr(datamodule, "num_labels", None) is not None and not model.semi_supervised:
        raise ConfigError(
            "data.num_labels makes partly labelled batches for a semi-supervised model "
            "(model=m2 or m1m2): set data.num_labels=null"
        )
    if cfg.eval.get("disentanglement_points", 0) > 0 and cfg.test:
        check_factors(datamodule)  # not after training and the NLL
    return datamodule, model, ckpt_path


def scalars(results: list[dict]) -> dict[str, float]:
    return {k: float(v) for result in results for k, v in result.items()}


# Lines a user cannot act on: Lightning's advert for its own logger, its note that our
# RichModelSummary replaces its default one, torch's deprecation of a class Lightning uses, and
# Lightning's warning that a run without a validation split (data.val_size=0) has no val batches.
UNACTIONABLE_LOGS = ("litlogger", "Trainer already configured with model summary callbacks")
UNACTIONABLE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"Total length of `list` across ranks is zero",
)


def drop_unactionable(record: logging.LogRecord) -> bool:
    """A logging filter: False for the messages in UNACTIONABLE_LOGS."""
    message = record.getMessage()
    return not any(text in message for text in UNACTIONABLE_LOGS)


def quiet_lightning() -> None:
    """Send Lightning's messages through Hydra's handlers only (console and train.log), once,
    without the lines and warnings a user cannot act on."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if drop_unactionable not in rank_zero_log.filters:
        rank_zero_log.addFilter(drop_unactionable)
    for pattern in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; return the final metrics."""
    flush_subnormals(cfg)  # first: see its docstring
    quiet_lightning()
    drop_nvml_check_without_gpu()
    follow_requeue(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "highest"))
    try:
        datamodule, model, ckpt_path = prepare(cfg)
    except Exception as error:
        if user_error(error) is not None and not in_multirun():
            discard_run_folder(output_dir)
        raise
    save_config(cfg, output_dir / "config.yaml")
    if cfg.get("print_config", "summary") == "full":
        print_config_tree(cfg)
    else:
        print_config_summary(cfg, output_dir)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = make_loggers(cfg.get("logger"), cfg.paths.log_dir)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        last = output_dir / "checkpoints" / "last.ckpt"
        if not (last.exists() or trainer.fast_dev_run):  # no optimizer step (model=pca), so
            trainer.save_checkpoint(last)  # ModelCheckpoint wrote nothing
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        )
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    metrics.update(scalars(trainer.validate(model, datamodule=datamodule, ckpt_path=best)))
    if cfg.get("test", True):
        metrics.update(scalars(trainer.test(model, datamodule=datamodule, ckpt_path=best)))
        metrics.update(evaluate_after_test(trainer, model, datamodule, cfg.eval))
    metrics["global_step"] = trainer.global_step
    write_metrics(output_dir / "metrics.json", {"status": "ok", "best_checkpoint": best, **metrics})
    return metrics


@rank_zero_only
def discard_run_folder(output_dir: Path) -> None:
    """Remove the folder Hydra made for a run that could not start (only Hydra's files in it)."""
    if not HydraConfig.initialized() or not output_dir.is_dir():
        return
    hydra_files = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if {path.name for path in output_dir.iterdir()} <= hydra_files:
        shutil.rmtree(output_dir)
        with contextlib.suppress(OSError):
            output_dir.parent.rmdir()  # the date folder, if this run was all it held


def one_line(error: BaseException) -> str:
    cause = user_error(error) or error
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if isinstance(cause, VaelabError) else f"{type(cause).__name__}: {text}"


def run(cfg: DictConfig) -> float | None:
    """The entry point train.py calls.

    A user error ends a single run with one line on stderr and exit code 1. In a multirun a
    failed job is recorded in its metrics.json (status "failed" and the reason) and the sweep
    goes on with the next job (returning None, which an Optuna sweeper records as a failed
    trial).
    """
    try:
        metrics = train(cfg)
    except SIGTERMException:
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        print(f"stopped by a signal; resume with ckpt_path={last}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception as error:
        reason = one_line(error)
        if in_multirun():
            log.exception(f"job failed: {reason}")
            write_metrics(
                Path(cfg.paths.output_dir) / "metrics.json", {"status": "failed", "error": reason}
            )
            finish_wandb(failure=reason)
            return None
        if user_error(error) is None:
            raise
        print(f"error: {reason}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        finish_wandb()
    return metrics.get(cfg.get("optimized_metric", "val/elbo"))


def finish_wandb(failure: str | None = None) -> None:
    """Close the W&B run (marked failed, with the reason), so the next job starts its own."""
    wandb = sys.modules.get("wandb")  # not imported: no W&B run to close (logger=csv, none)
    if wandb is None or wandb.run is None:
        return
    if failure is not None:
        wandb.run.summary.update({"status": "failed", "error": failure})
    wandb.finish(exit_code=1 if failure else 0)
