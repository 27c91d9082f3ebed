import os
from pathlib import Path

import pytest
from helpers import write_tiny_mnist

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    return root, write_tiny_mnist(root)
