from pathlib import Path

import pytest
from helpers import ROOT, make_cfg
from hydra.utils import get_class, instantiate

GROUPS = {  # every option a user can pick (base_*.yaml are what options build on)
    group: sorted(
        p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("base_")
    )
    for group in (
        *("data", "model", "model/likelihood", "model/posterior", "model/prior"),
        *("trainer", "logger", "experiment", "debug"),
    )
}


def test_every_group_has_its_options():
    assert {"sprites", "dsprites", "mnist", "fashion_mnist", "cifar10"} <= set(GROUPS["data"])
    assert {"mlp_vae", "conv_vae", "ae", "linear_ae"} <= set(GROUPS["model"])
    assert {"default", "cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
    assert {"wandb", "csv", "tensorboard", "none"} <= set(GROUPS["logger"])
    assert {"fdr", "limit", "overfit"} <= set(GROUPS["debug"])


@pytest.mark.parametrize(
    "group, option", [(g, o) for g, options in GROUPS.items() for o in options]
)
def test_every_option_composes_into_a_model(group, option, tmp_path: Path):
    cfg = make_cfg(tmp_path, [f"{group}={option}"])
    data_class = get_class(cfg.data._target_)
    model = instantiate(cfg.model, image_shape=data_class.image_shape, _convert_="all")
    assert model.image_shape == data_class.image_shape
    trainer_class = get_class(cfg.trainer._target_)
    assert trainer_class.__name__ == "Trainer"


def test_ae_is_conv_vae_without_noise(tmp_path: Path):
    ae, vae = make_cfg(tmp_path, ["model=ae"]).model, make_cfg(tmp_path, ["model=conv_vae"]).model
    assert ae.stochastic is False and ae.kl_weight == 0 and vae.stochastic is True
    assert ae.encoder == vae.encoder and ae.decoder == vae.decoder
