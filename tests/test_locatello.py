"""Locatello et al. 2019's study: its conv nets layer by layer, its grids, a short preset's run."""

import json

import pytest
import torch
from helpers import ROOT, make_cfg
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vaelab.errors import ConfigError
from vaelab.nets.locatello import LocatelloDecoder, LocatelloEncoder
from vaelab.train import train

STUDY_GRIDS = {  # Locatello et al. 2019, Table 2 (the hyperparameter each model sweeps)
    "beta_vae": ("model.kl_weight", "1,2,4,6,8,16"),
    "annealed_vae": ("model.capacity_max", "5,10,25,50,75,100"),
    "beta_tcvae": ("model.tc_weight", "1,2,4,6,8,10"),
    "factor_vae": ("model.gamma", "10,20,30,40,50,100"),
    "dip_vae": ("model.lambda_od", "1,2,5,10,20,50"),
}


def test_the_nets_are_disentanglement_libs():
    encoder = LocatelloEncoder((1, 64, 64), 20)
    sides, x = [], torch.zeros(2, 1, 64, 64)
    for layer in encoder.net:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            sides.append((x.shape[1], x.shape[2]))
    assert sides == [(32, 32), (32, 16), (64, 8), (64, 4)] and x.shape == (2, 20)
    convs = (1 * 32 * 16 + 32) + (32 * 32 * 16 + 32) + (32 * 64 * 4 + 64) + (64 * 64 * 4 + 64)
    dense = (1024 * 256 + 256) + (256 * 20 + 20)
    assert sum(p.numel() for p in encoder.parameters()) == convs + dense
    decoder = LocatelloDecoder(10, (1, 64, 64))
    assert decoder(torch.zeros(3, 2, 10)).shape == (3, 2, 1, 64, 64)
    dense = (10 * 256 + 256) + (256 * 1024 + 1024)
    deconvs = (64 * 64 * 16 + 64) + (64 * 32 * 16 + 32) + (32 * 32 * 16 + 32) + (32 * 1 * 16 + 1)
    assert sum(p.numel() for p in decoder.parameters()) == dense + deconvs
    with pytest.raises(ConfigError, match="64x64"):
        LocatelloEncoder((1, 28, 28), 20)


@pytest.mark.parametrize("model", sorted(STUDY_GRIDS))
def test_each_preset_sweeps_the_studys_grid_on_its_footing(model):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment=locatello19_{model}"], return_hydra_config=True
        )
    key, values = STUDY_GRIDS[model]
    assert cfg.hydra.sweeper.params[key] == values and cfg.hydra.sweeper.params.seed == "0,1,2"
    assert cfg.model.encoder._target_.endswith("LocatelloEncoder") and cfg.model.latent_dim == 10
    assert cfg.model.optimizer.lr == 1e-4 and cfg.data.batch_size == 64
    assert cfg.trainer.max_steps == 300_000 and cfg.eval.disentanglement_points == 10_000


def test_a_short_preset_trains_and_scores(tmp_path):
    overrides = [
        "experiment=locatello19_factor_vae_short",
        "debug=limit",
        "data.size=120",
        "model.discriminator_dims=[16]",
        "eval.disentanglement_points=40",
        "eval.num_importance_samples=4",
        "eval.plausibility_samples=0",
    ]
    train(make_cfg(tmp_path, overrides))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test/nll", "test/mig", "test/factor_vae_score", "test/dci_disentanglement"} <= set(
        saved
    )


def test_the_study_runs_on_dsprites_too(tmp_path):
    """data=dsprites under the study's footing builds (it holds the file in memory whatever
    data.in_memory says)."""
    cfg = make_cfg(tmp_path, ["experiment=locatello19_beta_vae", "data=dsprites"])
    datamodule = instantiate(cfg.data)
    assert datamodule.in_memory and datamodule.size is None and datamodule.batch_size == 64
