from pathlib import Path

import pytest
import torch
from helpers import ROOT, make_cfg
from hydra.utils import get_class, instantiate

from vaelab.errors import ConfigError, user_error
from vaelab.nets.mlp import MLPEncoder

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
    if cfg.model._target_ == "vaelab.m1m2.M1M2":  # built on a trained M1 (tests/test_m2.py)
        with pytest.raises(Exception) as raised:
            instantiate(cfg.model, image_shape=data_class.image_shape, _convert_="all")
        assert "set model.features_ckpt" in str(user_error(raised.value))
        return
    model = instantiate(cfg.model, image_shape=data_class.image_shape, _convert_="all")
    assert model.image_shape == data_class.image_shape
    trainer_class = get_class(cfg.trainer._target_)
    assert trainer_class.__name__ == "Trainer"


def test_ae_is_conv_vae_without_noise(tmp_path: Path):
    ae, vae = make_cfg(tmp_path, ["model=ae"]).model, make_cfg(tmp_path, ["model=conv_vae"]).model
    assert ae.stochastic is False and ae.kl_weight == 0 and vae.stochastic is True
    assert ae.encoder == vae.encoder and ae.decoder == vae.decoder


FAMILY = ("mlp_vae", "iaf_vae", "mog_vae", "vamp_vae", "hvae2", "vq_mlp_vae")


@pytest.mark.parametrize("model", FAMILY)
def test_the_family_preset_sets_every_member_on_the_same_footing(model, tmp_path: Path):
    """One multirun (model=...) makes the README's family table: each member takes the
    preset's nets, He init and latent size."""
    cfg = make_cfg(tmp_path, ["experiment=family_mnist_short", f"model={model}"])
    built = instantiate(cfg.model, image_shape=(1, 28, 28), _convert_="all")
    assert built.latent_dim == 50
    first = built.encoder.net[0]
    assert first.in_features == 784 and first.out_features == 200
    assert abs(float(first.weight.std()) - (2 / 784) ** 0.5) < 0.002  # He: N(0, 2 / fan_in)


def test_mlp_init_options():
    torch.manual_seed(0)
    he = MLPEncoder((1, 100, 100), 4000, hidden_dims=[], init="he").net[0]
    assert torch.all(he.bias == 0)
    assert abs(float(he.weight.std()) - (2 / 10_000) ** 0.5) < 1e-4  # N(0, 2 / fan_in)
    default = MLPEncoder((1, 100, 100), 4000, hidden_dims=[]).net[0]
    bound = 1 / 10_000**0.5  # PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(default.weight.abs().max()) <= bound
    assert abs(float(default.weight.std()) - bound / 3**0.5) < 1e-4
    with pytest.raises(ConfigError, match="unknown init 'xavier'"):
        MLPEncoder((1, 2, 2), 3, init="xavier")
