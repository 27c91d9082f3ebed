"""Test helpers: the real config composed into tmp folders, tiny datasets in real file formats."""

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
# 120 sprites, batches of 8: a run of any model in seconds
TINY_SPRITES = ["data=sprites", "data.size=120", "data.batch_size=8", "data.eval_batch_size=8"]


def make_cfg(tmp_path: Path, overrides: list[str] = ()) -> DictConfig:
    """The real root config with outputs in tmp_path (no Hydra run needed)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path}",
                f"paths.data_dir={tmp_path / 'data'}",
                "logger=none",
                *overrides,
            ],
        )


def mnist_overrides(root: Path, val_size: int = 10) -> list[str]:
    """data=mnist read from the raw files under root (no download), `val_size` images for val."""
    return ["data=mnist", f"data.root={root}", "data.download=false", f"data.val_size={val_size}"]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file as in the MNIST distribution: magic (dtype 0x08, ndim), sizes, big-endian."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def write_tiny_mnist(root: Path, folder: str = "MNIST", train: int = 40, test: int = 20) -> dict:
    """Random 28x28 images and labels in MNIST's four raw IDX files under root/folder/raw."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test),
    }
    for name, array in arrays.items():
        write_idx(root / folder / "raw" / name, array)
    return arrays


def run_python(*args: str, cwd: Path = ROOT, wait: bool = True, timeout: int = 300):
    """`python *args` with W&B offline and unbuffered output: the finished process, or the
    running one (stdout and stderr piped) when wait is False."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    command = [sys.executable, *map(str, args)]
    if not wait:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def run_train(log_dir: Path, *overrides: str, **kwargs):
    """`python train.py` with its outputs under log_dir (see run_python for the keywords)."""
    return run_python(ROOT / "train.py", *overrides, f"paths.log_dir={log_dir}", **kwargs)


def logged_training_step(model, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    """model.training_step on (x, None) after torch.manual_seed(seed), and what it logged."""
    logged = {}
    model.log_dict = lambda values, **kwargs: logged.update(values)
    model.log = lambda name, value, **kwargs: logged.update({name: value})
    torch.manual_seed(seed)
    return model.training_step((x, None), 0), logged


def half_of_smallest_normal() -> float:
    """Half the smallest normal float32, computed on this (the main) thread: 0 when subnormals
    are flushed (flush_denormal), a subnormal otherwise."""
    return (torch.tensor([torch.finfo(torch.float32).tiny]) * 0.5).item()
