"""The VAE with two stochastic layers of Burda, Grosse & Salakhutdinov (2016), appendix C.

    q(z1, z2|x) = q(z1|x) q(z2|z1),   p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1),   p(z2) = N(0, I)

q(z1|x), q(z2|z1) and p(z1|z2) are diagonal Gaussians whose mean and log-variance come from
an MLP of their parent. A draw z = [z1, z2] is made of noise eps = [eps1, eps2], so the VAE's
training step, objectives (elbo, iwae) and the importance-weighted evaluation apply unchanged;
the KL has no closed form and is estimated from the draws, unit by unit, with the parts that do
have one taken exactly (see `weigh`). Pictures live in the
top layer: latent_dim is z2's size, a code is E[z2 | z1 = E[z1|x]], and a z2 decodes through
z1 = E[z1|z2].
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.errors import ConfigError
from vaelab.likelihoods import Likelihood
from vaelab.nets.mlp import MLPDecoder
from vaelab.posteriors.gaussian import (
    LOG_2PI,
    Encoded,
    GaussianPosterior,
    gaussian_kl,
    normal_log_prob,
    reparameterize,
)
from vaelab.priors.normal import NormalPrior
from vaelab.vae import VAE


def gaussian_log_prob(z: Tensor, p: Encoded) -> Tensor:
    """log N(z; p.mean, diag exp p.log_var) per unit."""
    return normal_log_prob((z - p.mean) * torch.exp(-0.5 * p.log_var), p.log_var)


class HVAE2(VAE):
    """x -> z1 -> z2 and back: `encoder` q(z1|x), `encoder_2` q(z2|z1), `decoder_2` p(z1|z2),
    `decoder` p(x|z1); `encoder_2` and `decoder_2` are called as (in_features, (out_features,))."""

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        likelihood: Likelihood,
        image_shape: Sequence[int],
        latent_dim: int = 50,
        latent_dim_1: int = 100,
        encoder_2: Callable[..., nn.Module] = MLPDecoder,
        decoder_2: Callable[..., nn.Module] = MLPDecoder,
        posterior: Callable[..., GaussianPosterior] = GaussianPosterior,
        prior: Callable[..., NormalPrior] = NormalPrior,
        free_bits: float = 0.0,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        for name, size in (("latent_dim", latent_dim), ("latent_dim_1", latent_dim_1)):
            if size < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {size}")
        if free_bits != 0:
            raise ConfigError(
                "model.free_bits needs a closed-form KL per latent dimension, which model=hvae2 "
                "has not: set model.free_bits=0"
            )
        # the VAE's nets and posterior are the bottom layer's: q(z1|x) and p(x|z1)
        super().__init__(
            encoder,
            decoder,
            likelihood,
            image_shape,
            latent_dim=latent_dim_1,
            posterior=posterior,
            prior=prior,
            compile=compile,
            **kwargs,
        )
        self.remember(latent_dim=latent_dim, latent_dim_1=latent_dim_1)
        self.posterior_2 = posterior(latent_dim)
        self.prior = prior(latent_dim, image_shape=self.image_shape)
        if not (self.posterior.gaussian and self.prior.standard):
            raise ConfigError(
                "model=hvae2 needs model/posterior=gaussian and model/prior=normal (its KL is "
                "split by unit and its prior is N(0, I))"
            )
        self.encoder_2 = encoder_2(latent_dim_1, (self.posterior_2.num_features,))
        self.decoder_2 = decoder_2(latent_dim, (2 * latent_dim_1,))
        if compile:
            self.encoder_2.compile()
            self.decoder_2.compile()

    @property
    def closed_form_kl(self) -> bool:
        return False

    @property
    def kl_from_densities(self) -> bool:
        return False  # kl_terms averages weigh's kl_per_unit

    @property
    def num_units(self) -> int:
        """The units of z1, then those of z2."""
        return self.latent_dim_1 + self.latent_dim

    @property
    def noise_dim(self) -> int:
        return self.num_units

    def posterior_2_of(self, z1: Tensor) -> Encoded:
        """q(z2|z1)'s mean and log-variance."""
        return self.posterior_2.split(self.encoder_2(z1))

    def prior_1_of(self, z2: Tensor) -> Encoded:
        """p(z1|z2)'s mean and log-variance."""
        mean, log_var = self.decoder_2(z2).chunk(2, dim=-1)
        return Encoded(mean, log_var)

    def code(self, x: Tensor) -> Tensor:
        """E[z2 | z1 = E[z1|x]]: the top-layer code that stands for x in pictures."""
        return self.posterior_2_of(self.encode(x).mean).mean

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for top-layer codes z2, at z1 = E[z1|z2]."""
        return self.decoder(self.prior_1_of(z).mean)

    def weigh(
        self, x: Tensor, q: Encoded, eps: Tensor, densities: bool = True
    ) -> dict[str, Tensor]:
        """VAE.weigh for z = [z1, z2] from q(z1|x) = q and q(z2|z1); `kl_per_unit` (samples,
        batch, num_units) holds each draw's estimate of the KL of each unit given its parents.

        The estimate takes in closed form what has one: for z1, -H[q(z1|x)] - log p(z1|z2),
        and for z2, KL(q(z2|z1) || N(0, I)). Its mean over q is the KL, as that of
        log q(z|x) - log p(z) is, with less variance; log q and log p (the IWAE weights and the
        evaluation's) stay those of the draw.
        """
        eps_1, eps_2 = eps.split([self.latent_dim_1, self.latent_dim], dim=-1)
        z1 = reparameterize(q.mean, q.log_var, eps_1)
        q2 = self.posterior_2_of(z1)
        z2 = reparameterize(q2.mean, q2.log_var, eps_2)
        log_p1 = gaussian_log_prob(z1, self.prior_1_of(z2))
        negative_entropy_1 = -0.5 * (q.log_var + LOG_2PI + 1.0)
        weighed = {
            "z": torch.cat([z1, z2], dim=-1),
            "log_likelihood": self.likelihood.log_prob(x, self.decoder(z1)),
            "kl_per_unit": torch.cat(
                [negative_entropy_1 - log_p1, gaussian_kl(q2.mean, q2.log_var)], dim=-1
            ),
        }
        if densities:
            log_q = torch.cat(
                [normal_log_prob(eps_1, q.log_var), normal_log_prob(eps_2, q2.log_var)], -1
            )
            log_p = torch.cat([log_p1, normal_log_prob(z2, torch.zeros_like(z2))], dim=-1)
            weighed |= {"log_prior": log_p.sum(-1), "log_posterior": log_q.sum(-1)}
        return weighed

    def kl_terms(self, q: Encoded, weighed: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The KL per example and per unit of z1, z2: `weigh`'s estimate averaged over draws."""
        kl_per_unit = weighed["kl_per_unit"].mean(0)
        return kl_per_unit.sum(-1), kl_per_unit

    def posterior_mean(self, q: Encoded) -> None:
        """E_q[z2] has no closed form: evaluation averages the draws."""
        return None
