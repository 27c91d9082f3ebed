"""Evaluate a trained model the way the papers do: importance-weighted NLL, ELBO, active units.

python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
python evaluate.py ckpt_path=... eval.num_importance_samples=5000 data.root=../shared/data
python evaluate.py ckpt_path=... eval.images=true eval.num_importance_samples=0 \
    eval.plausibility_samples=0                                            # pictures only

The run folder's `config.yaml` (beside `checkpoints/`) rebuilds the datamodule and the model
exactly as training built them; `data.<key>=` / `model.<key>=` overrides on the command line
(evaluate.py puts them in `run_overrides`) go on top of it. Without that file, the groups named
on the command line (`model=... data=...`) are used.
"""

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import rich
import rich.table
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from vaelab.callbacks.images import LatentImages
from vaelab.checkpoints import check_checkpoint, resolve_checkpoint
from vaelab.components import build
from vaelab.config import write_metrics
from vaelab.disentanglement.report import model_disentanglement
from vaelab.errors import ConfigError, user_error
from vaelab.metrics import (
    MeanPerDimension,
    UnitActivity,
    count_active_units,
    importance_weighted_estimate,
)
from vaelab.plausibility import regularity
from vaelab.subnormals import flush_subnormals
from vaelab.vae import VAE

RUN_GROUPS = ("data", "model")


@torch.no_grad()
def evaluate(
    model: VAE,
    dataloader: DataLoader,
    num_importance_samples: int,
    chunk_size: int,
    *,
    prepare_batch: Callable | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Test metrics over a dataloader, per example in nats unless the name says otherwise.

    nll = -mean_x L_k(x) (Burda et al. 2016) and nll_bits_per_dim = nll / (D ln 2); elbo,
    reconstruction and kl from the same k draws (kl in closed form); active_units and
    kl_dim_NN, the KL of latent dimension NN averaged over the data. A deterministic model
    gets the reconstruction, kl and elbo of its `draw` (kl 0 for an autoencoder) and active
    units, and the metrics of its `extra_metrics()`. `prepare_batch`
    turns a batch on the model's device into floats (a datamodule's `on_after_batch_transfer`).
    Metrics add up across DDP ranks when each rank passes its own shard of the data.
    """
    was_training = model.training
    model.eval()
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    averages = {
        name: MeanMetric().to(device).set_dtype(torch.float64)  # .to resets the dtype: first
        for name in ("log_likelihood", "reconstruction", "kl")
    }
    kl_per_dim = MeanPerDimension(model.num_units).to(device)
    activity = UnitActivity(model.num_units).to(device)
    extras = {name: metric.to(device) for name, metric in model.extra_metrics().items()}
    for batch in dataloader:
        batch = move_data_to_device(batch, device)
        x = model.observed(prepare_batch(batch) if prepare_batch else batch)
        if not model.stochastic:
            draws = model.draw(x)
            activity.update(draws["code"])
            terms = model.elbo_terms(draws)
            averages["reconstruction"].update(terms["reconstruction"])
            averages["kl"].update(terms["kl"])
            for metric in extras.values():
                metric.update(draws)
            continue
        estimate = importance_weighted_estimate(
            model, x, num_importance_samples, chunk_size, generator
        )
        activity.update(estimate.posterior_mean)
        if estimate.kl_per_dim is not None:
            kl_per_dim.update(estimate.kl_per_dim)
        averages["log_likelihood"].update(estimate.log_likelihood)
        averages["reconstruction"].update(estimate.reconstruction)
        averages["kl"].update(estimate.kl)
    model.train(was_training)

    bits = model.num_dims * math.log(2)  # nats per image -> bits per dimension
    reconstruction = float(averages["reconstruction"].compute())
    kl = float(averages["kl"].compute())
    results: dict[str, float] = {}
    if model.stochastic:
        nll = -float(averages["log_likelihood"].compute())
        results |= {"nll": nll, "nll_bits_per_dim": nll / bits}
    results |= {
        "elbo": reconstruction - kl,
        "reconstruction": reconstruction,
        "kl": kl,
        "bits_per_dim": -(reconstruction - kl) / bits,
        "active_units": count_active_units(activity.compute()),
        "num_examples": int(activity.count),
        **{name: float(metric.compute()) for name, metric in extras.items()},
    }
    if model.stochastic:
        results["num_importance_samples"] = num_importance_samples
    if model.stochastic and int(kl_per_dim.count) > 0:
        width = max(2, len(str(model.num_units - 1)))
        for dim, value in enumerate(kl_per_dim.compute().tolist()):
            results[f"kl_dim_{dim:0{width}d}"] = value
    return results


def evaluate_split(
    model: VAE, datamodule: L.LightningDataModule, split: str, eval_cfg: DictConfig
) -> dict[str, float]:
    """`evaluate` on the datamodule's `val` or `test` split, batches made as in training."""
    return evaluate(
        model,
        split_loader(datamodule, split),
        eval_cfg.num_importance_samples,
        eval_cfg.chunk_size,
        prepare_batch=functools.partial(datamodule.on_after_batch_transfer, dataloader_idx=0),
        seed=eval_cfg.seed,
    )


def split_loader(datamodule: L.LightningDataModule, split: str) -> DataLoader:
    """The datamodule's `val` or `test` DataLoader."""
    datamodule.setup("test")
    if split not in datamodule.datasets:
        raise ConfigError(f"the data has no {split} split (data.val_size=0?): use eval.split=test")
    return datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()


@torch.no_grad()
def error_rate(model: VAE, datamodule: L.LightningDataModule, split: str) -> dict[str, float]:
    """A semi-supervised model's share of misclassified images of the split (M2's `predict`)."""
    was_training = model.training
    model.eval()
    errors = MeanMetric().to(model.device)
    for batch in split_loader(datamodule, split):
        batch = datamodule.on_after_batch_transfer(move_data_to_device(batch, model.device), 0)
        images, labels = batch
        errors.update((model.predict(images) != labels).to(images.dtype))
    model.train(was_training)
    return {"error": float(errors.compute())}


@rank_zero_only
def print_results(results: dict[str, float], title: str) -> None:
    """The metrics as a table; the KL of each latent dimension on one line below it."""
    samples = results.get("num_importance_samples")
    table = rich.table.Table(title=title + (f", NLL with k = {samples}" if samples else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    per_dim = []
    for name, value in results.items():
        if name.startswith("kl_dim_"):
            per_dim.append(f"{value:.2f}")
        else:
            table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    rich.print(table)
    if per_dim:
        rich.print(f"KL per latent dimension (nats): {' '.join(per_dim)}")


def evaluate_after_test(
    trainer: L.Trainer, model: VAE, datamodule: L.LightningDataModule, eval_cfg: DictConfig
) -> dict[str, float]:
    """The hook for train.py after `trainer.test`: `test/<metric>` from `evaluate` (where
    `eval.num_importance_samples` > 0) and `regularity` (where `eval.plausibility_samples` > 0),
    on every rank.

    Each rank evaluates its shard of the test set on its device and the metrics add up across
    ranks; rank zero prints the table and every logger gets the values.
    """
    model.to(trainer.strategy.root_device)
    results = evaluate_test_split(model, datamodule, eval_cfg)
    metrics = {f"test/{name}": value for name, value in results.items()}
    for logger in trainer.loggers if metrics else ():
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
    return metrics


def evaluate_test_split(
    model: VAE, datamodule: L.LightningDataModule, eval_cfg: DictConfig, split: str = "test"
) -> dict[str, float]:
    """The metrics `eval` asks for on a split, printed: `evaluate`'s, the disentanglement
    scores (drawn from the factor grid, not the split) and `regularity`'s."""
    results: dict[str, float] = {}
    if eval_cfg.num_importance_samples > 0 and not model.has_nll:
        rank_zero_info(f"no NLL: {type(model).__name__} is measured by its error rate instead")
    elif eval_cfg.num_importance_samples > 0:
        results |= evaluate_split(model, datamodule, split, eval_cfg)
        print_results(results, f"{split} set")
    if eval_cfg.get("disentanglement_points", 0) > 0:
        scores = model_disentanglement(
            model, datamodule, eval_cfg.disentanglement_points, eval_cfg.seed
        )
        print_results(scores, f"disentanglement, {eval_cfg.disentanglement_points} points")
        results |= scores
    if eval_cfg.get("plausibility_samples", 0) > 0:
        if not datamodule.single_objects:
            rank_zero_info(
                f"no regularity check: {type(datamodule).__name__}'s images are not one object "
                "each (eval.plausibility_samples applies to sprites, MNIST and Fashion-MNIST)"
            )
            return results
        report = regularity(model, datamodule, eval_cfg.plausibility_samples, eval_cfg.seed, split)
        print_regularity(report, eval_cfg.plausibility_samples, split)
        results |= report
    return results


@rank_zero_only
def print_regularity(report: dict[str, float], num_samples: int, split: str) -> None:
    print(
        f"regular latent space: {100 * report['plausible_samples']:.1f}% of {num_samples} "
        "generated images are plausible (one object, mean intensity in the real images' "
        f"1st-99th percentile band); {split} reconstructions "
        f"{100 * report['plausible_reconstructions']:.1f}%, {split} images "
        f"{100 * report['plausible_data']:.1f}%"
    )


def run_config(cfg: DictConfig, ckpt_path: Path) -> DictConfig:
    """The data and model settings: the run's config.yaml or, without one, this command's `data`
    and `model` groups; `cfg.run_overrides` (the command line's data.* and model.*) on top."""
    saved = ckpt_path.resolve().parent.parent / "config.yaml"
    chosen = [group for group in RUN_GROUPS if cfg.get(group) is not None]
    if saved.is_file():
        if chosen:
            raise ConfigError(
                f"{chosen[0]}=... chooses a group, but the model and data come from {saved}: "
                "override single keys instead (e.g. data.root=...)"
            )
        base, source = OmegaConf.load(saved), str(saved)
    elif len(chosen) < len(RUN_GROUPS):
        raise ConfigError(f"no {saved}: name the checkpoint's groups, model=... data=...")
    else:
        print(f"no {saved}: using this command's data and model groups")
        base, source = cfg, "the data and model groups"
    OmegaConf.set_struct(base, True)
    try:
        return OmegaConf.merge(base, cfg.run_overrides)
    except ConfigKeyError as error:
        raise ConfigError(f"{error.full_key}: no such key in {source}") from None


def load_model(cfg: DictConfig) -> tuple[L.LightningDataModule, VAE]:
    """The datamodule and the checkpoint's model, built as `vaelab.components.build` does."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError(
            "give the checkpoint to evaluate: ckpt_path=<a .ckpt file, a run folder or last>"
        )
    ckpt_path = Path(resolve_checkpoint(str(cfg.ckpt_path), cfg.paths.log_dir))
    datamodule, model = build(run_config(cfg, ckpt_path))
    checkpoint = check_checkpoint(str(ckpt_path), model)
    model.load_state_dict(checkpoint["state_dict"])
    return datamodule, model


def device_for(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate `cfg.ckpt_path`: with `eval.images`, write the pictures training writes; where
    `eval` asks for metrics that apply (`evaluate_test_split`), print them and write
    metrics.json."""
    split = cfg.eval.split
    if split not in ("val", "test"):
        raise ConfigError(f"eval.split must be val or test, got {split!r}")
    datamodule, model = load_model(cfg)
    model.to(device_for(cfg.eval.device))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.eval.images:
        LatentImages(seed=cfg.eval.seed).write(model, datamodule, split, output_dir / "images")
        print(f"pictures of the {split} split in {output_dir / 'images'}")
    results = evaluate_test_split(model, datamodule, cfg.eval, split)
    if model.semi_supervised:
        error = error_rate(model, datamodule, split)
        print_results(error, f"{split} set")
        results = error | results
    if not results:
        return {}
    saved = {"ckpt_path": str(cfg.ckpt_path), "split": split, **results}
    write_metrics(output_dir / "metrics.json", saved)
    return results


def main(cfg: DictConfig) -> dict[str, float]:
    """The entry point evaluate.py calls: user errors become one line and exit code 1."""
    flush_subnormals(cfg)  # first: see its docstring
    try:
        return run(cfg)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(1) from None
