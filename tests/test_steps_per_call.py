"""model.steps_per_call=S: S optimizer steps inside one training_step train exactly as S calls
of one step each (same batches, same noise), and resume exactly."""

import pytest
import torch
from helpers import make_cfg

from vaelab.checkpoints import CheckpointError
from vaelab.errors import ConfigError, user_error
from vaelab.train import prepare, train

# 108 training sprites in batches of 4: 27 steps an epoch, 9 calls of S = 3; a schedule that
# halves the lr after the first epoch, a KL warm-up over 30 steps and the EMA callback, so the
# steps' order, the global step and the epoch's scheduler step all show in the weights
TINY = [
    *("data=sprites", "data.size=120", "data.batch_size=4", "data.eval_batch_size=6"),
    *("model.latent_dim=3", "model.kl_warmup_steps=30", "trainer.max_epochs=2", "test=false"),
    *("eval.plausibility_samples=0", "callbacks=ema", "callbacks.weight_averaging.decay=0.8"),
    "+model.scheduler={_target_:vaelab.schedules.GeometricStagesLR,_partial_:true,"
    "num_stages:2,growth:1.0,decay:0.5}",
]


def last_checkpoint(folder) -> dict:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)


def assert_same_training(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # the average and the trained weights
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=1e-5, atol=1e-6, msg=name)
    (state_a,), (state_b,) = a["optimizer_states"], b["optimizer_states"]
    assert state_a["param_groups"][0]["lr"] == state_b["param_groups"][0]["lr"]
    for index, moments in state_a["state"].items():
        torch.testing.assert_close(state_b["state"][index]["exp_avg"], moments["exp_avg"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.mark.parametrize(
    "batch_size, steps_per_call, steps_per_epoch",
    [(4, 3, 27), (5, 4, 21)],  # 9 calls of 3; 5 calls of 4 and one of 1 (108 = 21 x 5 + 3)
)
def test_several_steps_a_call_train_as_one_step_a_call(
    tmp_path, batch_size, steps_per_call, steps_per_epoch
):
    sizes = [f"data.batch_size={batch_size}"]
    train(make_cfg(tmp_path / "one", [*TINY, *sizes]))
    several = [*TINY, *sizes, f"model.steps_per_call={steps_per_call}"]
    train(make_cfg(tmp_path / "several", several))
    one, three = last_checkpoint(tmp_path / "one"), last_checkpoint(tmp_path / "several")
    assert one["global_step"] == 2 * steps_per_epoch
    assert one["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert_same_training(one, three)


@pytest.mark.parametrize(
    "model, latent_dim",
    [("iaf_vae", 3), ("vamp_vae", 3), ("mog_vae", 3), ("hvae2", 3), ("vq_mlp_vae", 10)],
)
def test_family_members_train_the_same_several_steps_a_call(tmp_path, model, latent_dim):
    """family_mnist_short's models (which it runs 10 steps a call), each with trained parts of
    its own: the flow, the pseudo-inputs, the mixture, the second stochastic layer, the
    codebook (with its moving averages, stepped with each optimizer step)."""
    member = [*TINY, f"model={model}", f"model.latent_dim={latent_dim}", "trainer.max_epochs=1"]
    several = "model.steps_per_call=3"
    if model == "vq_mlp_vae":  # keys of the VAE's config that the VQ-VAE's lacks, added
        member = [f"+{o}" if o.startswith("model.kl_") else o for o in member]
        member.append("model.codebook_update=ema")
        several = f"+{several}"
    train(make_cfg(tmp_path / "one", member))
    train(make_cfg(tmp_path / "several", [*member, several]))
    one, several = last_checkpoint(tmp_path / "one"), last_checkpoint(tmp_path / "several")
    assert one["global_step"] == 27
    assert_same_training(one, several)


def test_resuming_after_an_epoch_of_several_steps_a_call_is_exact(tmp_path):
    several = [*TINY, "model.steps_per_call=3"]
    train(make_cfg(tmp_path / "straight", several))
    train(make_cfg(tmp_path / "first", [*several, "trainer.max_epochs=1"]))
    resumed = f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"
    train(make_cfg(tmp_path / "resumed", [*several, resumed]))
    straight, again = last_checkpoint(tmp_path / "straight"), last_checkpoint(tmp_path / "resumed")
    for key in ("state_dict", "current_model_state"):
        for name, value in straight[key].items():
            assert torch.equal(value, again[key][name]), (key, name)
    # Lightning counts the model's steps apart from its own: another S would restart at step 0
    with pytest.raises(CheckpointError, match="model.steps_per_call=3"):
        prepare(make_cfg(tmp_path / "other", [*TINY, resumed]))


def test_max_steps_is_not_overshot(tmp_path):
    cfg = make_cfg(tmp_path, [*TINY, "model.steps_per_call=4", "trainer.max_steps=10"])
    assert train(cfg)["global_step"] == 10


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.steps_per_call=2", "trainer.gradient_clip_val=1.0"],
        ["model.steps_per_call=2", "+trainer.accumulate_grad_batches=2"],
        ["model=m2", "model.steps_per_call=2"],
        ["model.steps_per_call=0"],
    ],
)
def test_settings_several_steps_a_call_cannot_honour_are_refused(tmp_path, overrides):
    with pytest.raises(Exception) as raised:
        prepare(make_cfg(tmp_path, ["data=sprites", "data.size=120", *overrides]))
    error = user_error(raised.value)
    assert isinstance(error, ConfigError) and "steps_per_call" in str(error)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=factor_vae", "model.discriminator_dims=[16]"],
        ["model=beta_tcvae"],
        ["model=dip_vae"],
        [
            "model=beta_vae",
            "model.capacity_max=5",
            "model.capacity_steps=20",
            "model.kl_warmup_steps=0",
        ],
    ],
    ids=["factor_vae", "beta_tcvae", "dip_vae", "annealed_vae"],
)
def test_locatello_objectives_train_the_same_several_steps_a_call(tmp_path, overrides):
    """The locatello19_* presets run 10 steps a call: FactorVAE's discriminator (its own
    parameter group), beta-TCVAE's N read from the training data, DIP-VAE's covariance and the
    annealed capacity, which rises with the global step."""
    member = [*TINY, *overrides, "trainer.max_epochs=1"]
    train(make_cfg(tmp_path / "one", member))
    train(make_cfg(tmp_path / "several", [*member, "model.steps_per_call=3"]))
    one, several = last_checkpoint(tmp_path / "one"), last_checkpoint(tmp_path / "several")
    assert one["global_step"] == 27
    assert_same_training(one, several)
