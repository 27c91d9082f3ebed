"""Printing and saving the composed Hydra config, and the run's metrics file."""

import json
from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.table
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

PRINT_ORDER = ("data", "model", "trainer", "callbacks", "logger", "paths")


@rank_zero_only
def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER) -> None:
    """Print the resolved config as a rich tree, one branch per top-level group."""
    tree = rich.tree.Tree("config", style="bold")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(f"[bold]{key}[/bold]").add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    rich.print(tree)


def short_name(node: DictConfig | None) -> str:
    """A config node's class name (`_target_`'s last part), or "none"."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else "none"


@rank_zero_only
def print_config_summary(cfg: DictConfig, run_folder: Path) -> None:
    """What runs, on what, and where it lands, in a few lines (the whole config is in the run
    folder's config.yaml; `print_config=full` prints it as a tree instead)."""
    model, data, trainer = cfg.model, cfg.data, cfg.trainer
    parts = [f"latent_dim={model.get('latent_dim')}"]
    for part in ("posterior", "prior", "likelihood"):
        if part in model:
            parts.append(f"{part}={short_name(model[part])}")
    parts += [f"kl_weight={model.get('kl_weight')}", f"objective={model.get('objective')}"]
    length = (
        f"max_steps={trainer.max_steps}"
        if trainer.get("max_steps", -1) > 0
        else f"max_epochs={trainer.get('max_epochs')}"
    )
    loggers = ", ".join(short_name(node) for node in (cfg.get("logger") or {}).values())
    table = rich.table.Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "model": f"{short_name(model)}  " + " ".join(parts),
        "data": f"{short_name(data)}  batch_size={data.get('batch_size')}",
        "trainer": f"{trainer.get('accelerator')} x {trainer.get('devices')}  {length}  "
        f"precision={trainer.get('precision')}  seed={cfg.get('seed')}  "
        f"steps_per_call={model.get('steps_per_call', 1)}  "
        f"flush_denormal={cfg.get('flush_denormal', True)}",
        "logger": loggers or "none",
        "run folder": str(run_folder),
    }
    for name, value in rows.items():
        table.add_row(name, value)
    rich.print(table)


@rank_zero_only
def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config, the exact settings of this run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))


@rank_zero_only
def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
