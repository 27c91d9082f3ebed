"""The diagonal Gaussian posterior q(z|x) = N(g(x), diag exp h(x)), mean and log-variance from one
shared encoder trunk (Kingma & Welling 2014)."""

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


class Encoded(NamedTuple):
    """What the encoder says about x: the Gaussian's parameters and, for flows, a context h."""

    mean: Tensor  # (batch, latent_dim)
    log_var: Tensor | None  # None for a deterministic autoencoder
    context: Tensor | None = None


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, 1)) per dimension: (mean^2 + var - 1 - log var) / 2."""
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var)


def reparameterize(mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """z = mean + sigma * eps with sigma = exp(log_var / 2): a differentiable draw from q(z|x)."""
    return mean + torch.exp(0.5 * log_var) * eps


def normal_log_prob(eps: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mean, diag exp(log_var)) per dimension for z = mean + sigma * eps."""
    return -0.5 * (eps.square() + log_var + LOG_2PI)


class GaussianPosterior(nn.Module):
    """q(z|x) = N(mean, diag var); its KL to N(0, I) has a closed form."""

    gaussian = True  # q is N(mean, diag var): the KL to N(0, I) has a closed form

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    @property
    def num_features(self) -> int:
        """How many encoder outputs it takes: mean and log-variance."""
        return 2 * self.latent_dim

    def split(self, features: Tensor) -> Encoded:
        mean, log_var = features.chunk(2, dim=-1)
        return Encoded(mean, log_var)

    def rsample(self, q: Encoded, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z = mean + sigma * eps for eps (samples, batch, latent_dim), and log q(z|x),
        (samples, batch)."""
        return reparameterize(q.mean, q.log_var, eps), normal_log_prob(eps, q.log_var).sum(-1)

    def draw(self, q: Encoded, eps: Tensor) -> Tensor:
        """rsample's z alone, without log q(z|x)."""
        return reparameterize(q.mean, q.log_var, eps)

    def mean(self, q: Encoded) -> Tensor | None:
        """E_q[z] where it has a closed form (None where it must be estimated from draws)."""
        return q.mean

    def code(self, q: Encoded) -> Tensor:
        """The one code images decode for x: the flow of the Gaussian's mean (eps = 0)."""
        return q.mean
