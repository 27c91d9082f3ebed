"""The package's layout: no import cycles, one config per idea."""

import ast
from pathlib import Path

import yaml
from helpers import ROOT, run_python

SRC = ROOT / "src" / "vaelab"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_evaluate_does_not_import_train():
    """train.py runs evaluate's hook after testing; evaluate must not need train back."""
    assert "vaelab.train" not in imported_modules(SRC / "evaluate.py")
    check = "import sys, vaelab.evaluate; assert 'vaelab.train' not in sys.modules"
    assert run_python("-c", check).returncode == 0


def test_model_configs_hold_only_what_differs():
    """mlp_vae and conv_vae share base_vae.yaml; a key they both set must differ in value."""
    configs = [
        yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
        for name in ("mlp_vae", "conv_vae")
    ]
    shared = (set(configs[0]) & set(configs[1])) - {"defaults"}
    assert {key for key in shared if configs[0][key] == configs[1][key]} == set()
    assert all(config["defaults"][0] == "base_vae" for config in configs)
