"""Evaluate a checkpoint: `python evaluate.py ckpt_path=PATH`. See src/vaelab/evaluate.py."""

import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

RUN_KEY = re.compile(r"\+{0,2}((?:data|model)\.[^=]+=.*)", re.DOTALL)


def hydra_overrides(args: list[str]) -> list[str]:
    """The command line with each data.<key>= and model.<key>= moved under run_overrides: they
    override the run's config.yaml, which vaelab.evaluate checks them against, not this config."""
    return [f"++run_overrides.{match[1]}" if (match := RUN_KEY.fullmatch(a)) else a for a in args]


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, float]:
    from vaelab.evaluate import main as run  # imported here so --help and config errors stay fast

    return run(cfg)


if __name__ == "__main__":
    sys.argv[1:] = hydra_overrides(sys.argv[1:])
    main()
