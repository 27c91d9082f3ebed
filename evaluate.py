"""Evaluate a checkpoint: `python evaluate.py ckpt_path=PATH`. See src/vaelab/evaluate.py."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, float]:
    from vaelab.evaluate import main as run  # imported here so --help and config errors stay fast

    return run(cfg)


if __name__ == "__main__":
    main()
