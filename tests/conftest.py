import os
from pathlib import Path

import pytest
import torch
from helpers import write_tiny_mnist

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    return root, write_tiny_mnist(root)


@pytest.fixture(autouse=True)
def keep_subnormals_after_each_test():
    """train() and evaluate.py flush subnormals process-wide (flush_denormal): each test starts
    from torch's default."""
    yield
    torch.set_flush_denormal(False)
