"""A training step leaves out the draws' log p(z) and log q(z|x) where its loss does not need
them (VAE.trains_on_densities): the same loss and gradients as with them, for every family
member, and the models whose loss needs them (IWAE, a KL without closed form) still get them."""

import pytest
import torch
from helpers import TINY_SPRITES, make_cfg
from test_cvae import cvae_overrides

from vaelab.components import build

MODELS = {  # name: (overrides, whether the training loss needs the densities)
    "mlp_vae": ([], False),
    "mlp_vae_iwae": (["model.objective=iwae", "model.num_samples=3"], True),
    "beta_tcvae": (["model=beta_tcvae", "model.dataset_size=100"], False),
    "iaf_vae": (["model=iaf_vae"], True),
    "vamp_vae": (["model=vamp_vae"], True),
    "mog_vae": (["model=mog_vae"], True),
    "hvae2": (["model=hvae2", "model.latent_dim_1=4"], False),
    "cvae": (None, False),  # p(x|y): its batches' labels are part of x
}


def gradients(model, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [
        parameter.grad.clone() for parameter in model.parameters() if parameter.grad is not None
    ]


def model_and_batch(name: str, tmp_path) -> tuple:
    overrides, _ = MODELS[name]
    overrides = cvae_overrides(tmp_path) if overrides is None else [*TINY_SPRITES, *overrides]
    torch.manual_seed(0)
    model = build(make_cfg(tmp_path, [*overrides, "model.latent_dim=3"]))[1].double()
    model.log = model.log_dict = lambda *args, **kwargs: None
    images = torch.rand(6, *model.image_shape, dtype=torch.float64).lt(0.4).double()
    return model, (images, torch.arange(6) % 3)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_loss_and_gradients_are_those_of_the_full_draw(name, tmp_path):
    model, batch = model_and_batch(name, tmp_path)
    needs_densities = MODELS[name][1]
    assert model.trains_on_densities is needs_densities
    weighed_keys = []
    weigh = model.weigh

    def spy(*args, **kwargs):
        weighed = weigh(*args, **kwargs)
        weighed_keys.append(set(weighed))
        return weighed

    model.weigh = spy
    torch.manual_seed(5)
    step_loss = model.step_loss(batch)
    assert [{"log_prior", "log_posterior"} <= keys for keys in weighed_keys] == [needs_densities]
    step_gradients = gradients(model, step_loss)
    torch.manual_seed(5)
    x = model.observed(batch)
    full = model.draw(x)  # every term, as evaluation draws them
    full_loss = model.training_loss(full, model.kl_weight_at(0))
    torch.testing.assert_close(step_loss, full_loss, rtol=1e-12, atol=0)
    for got, expected in zip(step_gradients, gradients(model, full_loss), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)

    torch.manual_seed(5)
    lean = model.draw(x, densities=False)  # left out only where the KL does not need them
    assert (lean["log_prior_ratio"] is None) is (not model.kl_from_densities)
    assert full["log_prior_ratio"].shape == full["log_likelihood"].shape
    for key in ("log_likelihood", "kl", "kl_per_dim", "z"):
        torch.testing.assert_close(lean[key], full[key], rtol=0, atol=0)


def test_iaf_draw_is_rsample_without_its_density(tmp_path):
    torch.manual_seed(0)
    model = build(make_cfg(tmp_path, [*TINY_SPRITES, "model=iaf_vae", "model.latent_dim=3"]))[1]
    q = model.encode(torch.rand(4, *model.image_shape).lt(0.4).float())
    eps = torch.randn(2, 4, 3)
    z, _ = model.posterior.rsample(q, eps)
    torch.testing.assert_close(model.posterior.draw(q, eps), z, rtol=0, atol=0)
    assert not torch.equal(z, q.mean + (0.5 * q.log_var).exp() * eps)  # the flow moved it
