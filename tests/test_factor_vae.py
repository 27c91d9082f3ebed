"""FactorVAE: the permutation, the density-ratio TC and the discriminator's loss by hand, the
gradients kept apart, one optimizer equal to two Adams, and a run that resumes exactly."""

import copy
import math

import pytest
import torch
from helpers import TINY_SPRITES, make_cfg

from vaelab.components import build
from vaelab.errors import ConfigError, user_error
from vaelab.objectives import density_ratio_tc, discriminator_loss, permute_dims
from vaelab.train import train

SMALL = [
    "model=factor_vae",
    "model.latent_dim=3",
    "model.discriminator_dims=[16,16]",
    "model.optimizer.lr=1e-3",
    "model.discriminator_lr=1e-3",
]


def test_permute_dims_shuffles_each_unit_on_its_own():
    torch.manual_seed(0)
    z = torch.arange(40.0).view(20, 2) * torch.tensor([1.0, 100.0])
    permuted = permute_dims(z)
    for j in range(2):  # every column keeps its values
        assert torch.equal(permuted[:, j].sort().values, z[:, j].sort().values)
    rows = {tuple(row) for row in z.tolist()}
    assert sum(tuple(row) not in rows for row in permuted.tolist()) > 10  # pairs are broken up


def test_tc_and_discriminator_loss_by_hand():
    logits = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    probability = torch.softmax(logits, dim=1)[:, 0]  # D(z)
    by_hand = torch.log(probability / (1 - probability)).mean()
    assert density_ratio_tc(logits).item() == pytest.approx(by_hand.item())
    permuted = torch.tensor([[0.0, 3.0]])
    p_joint = torch.softmax(logits, dim=1)[:, 0]
    p_permuted = torch.softmax(permuted, dim=1)[:, 1]
    expected = 0.5 * (-torch.log(p_joint).mean() - torch.log(p_permuted).mean())
    assert discriminator_loss(logits, permuted).item() == pytest.approx(expected.item())
    assert discriminator_loss(torch.zeros(3, 2), torch.zeros(3, 2)).item() == pytest.approx(
        math.log(2)
    )


def tiny_factor_vae(tmp_path, *overrides: str):
    _, model = build(make_cfg(tmp_path, [*TINY_SPRITES, *SMALL, *overrides]))
    return model


def test_gradients_stay_apart(tmp_path):
    """The discriminator's gradient is its loss's alone; the VAE's is its ELBO plus gamma TC."""
    model = tiny_factor_vae(tmp_path, "model.gamma=3.0")
    x = torch.bernoulli(torch.full((8, 1, 64, 64), 0.3), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    draws = model.draw(x)
    state = torch.get_rng_state()
    model.training_loss(draws, 1.0).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    torch.manual_seed(5)
    draws = model.draw(x)
    torch.set_rng_state(state)  # the same permutation
    z = draws["z"][0]
    elbo_loss = -(draws["log_likelihood"].mean() - draws["kl"].mean())
    critic = copy.deepcopy(model.discriminator).requires_grad_(False)
    vae_loss = elbo_loss + 3.0 * density_ratio_tc(critic(z))
    codes = z.detach()
    d_loss = discriminator_loss(
        model.discriminator(codes), model.discriminator(permute_dims(codes))
    )
    vae_params = [(n, p) for n, p in model.named_parameters() if not n.startswith("discrimin")]
    d_params = [(n, p) for n, p in model.named_parameters() if n.startswith("discrimin")]
    for (name, _), grad in zip(
        vae_params, torch.autograd.grad(vae_loss, [p for _, p in vae_params]), strict=True
    ):
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)
    for (name, _), grad in zip(
        d_params, torch.autograd.grad(d_loss, [p for _, p in d_params]), strict=True
    ):
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)


def test_one_optimizer_equals_two_adams(tmp_path):
    model = tiny_factor_vae(tmp_path, "model.discriminator_betas=[0.5,0.9]")
    twin = copy.deepcopy(model)
    optimizer = model.configure_optimizers()["optimizer"]
    vae = [p for n, p in twin.named_parameters() if not n.startswith("discrimin")]
    first = torch.optim.Adam(vae, lr=1e-3)
    second = torch.optim.Adam(twin.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            # in its weight's memory layout (channels-last convs), as autograd gives it
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=generator))
            q.grad = p.grad.clone()
        optimizer.step()
        first.step()
        second.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_trains_logs_its_terms_and_resumes_exactly(tmp_path):
    overrides = [*TINY_SPRITES, *SMALL, "debug=limit", "eval.plausibility_samples=0"]
    metrics = train(make_cfg(tmp_path / "a", overrides))
    assert math.isfinite(metrics["test/elbo"]) and metrics["global_step"] == 10
    assert {"train/tc", "train/discriminator_loss"} <= set(metrics)
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(last["optimizer_states"]) == 1
    assert len(last["optimizer_states"][0]["param_groups"]) == 2
    assert any(k.startswith("discriminator.") for k in last["state_dict"])
    # one epoch, then resume for the second: the same weights as two epochs straight
    train(make_cfg(tmp_path / "b", [*overrides, "trainer.max_epochs=1"]))
    resumed = make_cfg(
        tmp_path / "c", [*overrides, f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"]
    )
    train(resumed)
    again = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in last["state_dict"].items():
        assert torch.equal(value, again["state_dict"][name]), name


@pytest.mark.parametrize(
    ("override", "message"),
    [("model.objective=iwae", "model=factor_vae"), ("model.gamma=-1", "model.gamma")],
)
def test_settings_that_make_no_sense_are_refused(tmp_path, override, message):
    with pytest.raises(Exception) as raised:  # Hydra wraps what the constructor raises
        tiny_factor_vae(tmp_path, override)
    error = user_error(raised.value)  # what train.py prints, as one line
    assert isinstance(error, ConfigError) and message in str(error) and "\n" not in str(error)
