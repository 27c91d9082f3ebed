"""Train a VAE: `python train.py [overrides]`. See src/vaelab/train.py and conf/train.yaml."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vaelab.train import run  # imported here so --help and config errors stay fast

    return run(cfg)


if __name__ == "__main__":
    main()
