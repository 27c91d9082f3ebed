"""FactorVAE (Kim & Mnih 2018): the ELBO plus gamma times a discriminator's estimate of the
total correlation of the codes, the discriminator trained beside the VAE.

    VAE loss           -(reconstruction - beta_t kl) + gamma mean_b (logit_0(z_b) - logit_1(z_b))
    discriminator loss 0.5 (CE(D(z), q) + CE(D(permute_dims(z)), permuted))

z is one draw from q(z|x) per example. As in disentanglement_lib (Locatello et al. 2019), the
codes the discriminator sees and their permutation come from the same batch, and both losses
are taken from the same forward pass; the VAE's gradient does not reach the discriminator nor
the discriminator's the VAE. One optimizer holds both as parameter groups, the discriminator's
with its own lr and betas (Kim & Mnih: Adam 1e-4, betas 0.5 and 0.9): Adam's update is per
parameter, so that equals two Adams, and it keeps one optimizer step per batch (global_step,
max_steps, schedules and exact resume as for every other model).
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from vaelab.errors import ConfigError
from vaelab.objectives import density_ratio_tc, discriminator_loss, permute_dims
from vaelab.vae import VAE


def code_discriminator(latent_dim: int, hidden_dims: Sequence[int]) -> nn.Sequential:
    """An MLP from codes to two logits (q(z), permuted), LeakyReLU(0.2) between layers."""
    sizes = [latent_dim, *hidden_dims, 2]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers[:-1])


class FactorVAE(VAE):
    def __init__(
        self,
        *args: Any,
        gamma: float = 40.0,
        discriminator_dims: Sequence[int] = (1000,) * 6,
        discriminator_lr: float = 1e-4,
        discriminator_betas: Sequence[float] = (0.5, 0.9),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.objective != "elbo" or not self.stochastic or self.capacity_max > 0:
            raise ConfigError(
                "model=factor_vae adds its total-correlation term to the (beta-)ELBO of a "
                "stochastic encoder: keep model.objective=elbo and model.capacity_max=0"
            )
        if gamma < 0:
            raise ConfigError(f"model.gamma must be >= 0, got {gamma}")
        self.remember(
            gamma=gamma,
            discriminator_dims=list(discriminator_dims),
            discriminator_lr=discriminator_lr,
            discriminator_betas=list(discriminator_betas),
        )
        self.discriminator = code_discriminator(self.latent_dim, discriminator_dims)

    def training_loss(self, draws: dict[str, Tensor], kl_weight: float) -> Tensor:
        """The VAE's loss with gamma TC, plus the discriminator's loss (module docstring)."""
        loss = super().training_loss(draws, kl_weight)
        z = draws["z"][0]
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        tc = density_ratio_tc(functional_call(self.discriminator, frozen, (z,)))
        codes = z.detach()  # both halves through the discriminator in one pass
        logits = self.discriminator(torch.cat([codes, permute_dims(codes)]))
        critic = discriminator_loss(*logits.chunk(2))
        if self.logs_this_step():
            logged = {"train/tc": tc, "train/discriminator_loss": critic}
            self.log_dict(logged, on_step=True, on_epoch=False, sync_dist=True)
        return loss + self.gamma * tc + critic

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The VAE's parameters at the optimizer's settings; the discriminator's at its own."""
        critic = set(self.discriminator.parameters())
        return [
            {"params": [p for p in self.parameters() if p not in critic]},
            {
                "params": list(self.discriminator.parameters()),
                "lr": self.discriminator_lr,
                "betas": tuple(self.discriminator_betas),
            },
        ]
