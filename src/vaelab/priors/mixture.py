"""Gaussian mixture priors: a learned mixture (`mog`) and the VampPrior (`vamp`).

Both are p(z) = sum_k pi_k N(z; m_k, diag v_k). The squares (z_j - m_kj)^2 / v_kj are formed
directly, never by expanding them into z^2/v - 2 z m/v + m^2/v: with the small variances that
pseudo-inputs' posteriors reach, that expansion cancels catastrophically in float32, and
training learns to exploit the error (a negative KL). To bound memory, the components are taken
in blocks of at most MAX_ELEMENTS / (draws x latent_dim), their log-sum-exp accumulated.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import ConfigError
from vaelab.posteriors.gaussian import LOG_2PI
from vaelab.priors.normal import Encode, NormalPrior

MAX_ELEMENTS = 2**26  # of the (draws, components, latent_dim) block of squares


def mixture_log_prob(z: Tensor, log_weights: Tensor, means: Tensor, log_vars: Tensor) -> Tensor:
    """log sum_k w_k N(z; means_k, diag exp log_vars_k) for z (..., L); components (K, L)."""
    flat = z.reshape(-1, 1, z.shape[-1])  # (N, 1, L)
    block = max(1, MAX_ELEMENTS // flat[:, 0].numel())
    constant = log_weights - 0.5 * (log_vars.sum(-1) + z.shape[-1] * LOG_2PI)  # (K,)
    total = None
    for start in range(0, len(means), block):
        part = slice(start, start + block)
        square = ((flat - means[part]).square() * torch.exp(-log_vars[part])).sum(-1)
        log_terms = torch.logsumexp(constant[part] - 0.5 * square, dim=-1)  # (N,)
        total = log_terms if total is None else torch.logaddexp(total, log_terms)
    return total.reshape(z.shape[:-1])


def check_num_components(num_components: int) -> None:
    if num_components < 1:
        raise ConfigError(f"model.prior.num_components must be >= 1, got {num_components}")


def sample_mixture(
    num_samples: int,
    log_weights: Tensor,
    means: Tensor,
    log_vars: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Draws from the mixture: a component by its weight, then its Gaussian (on the CPU stream)."""
    cpu = torch.device("cpu")
    probs = log_weights.detach().softmax(-1).to(cpu, torch.float32)
    component = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
    eps = torch.randn(num_samples, means.shape[-1], generator=generator).to(means)
    component = component.to(means.device)
    return means[component] + torch.exp(0.5 * log_vars[component]) * eps


class MixturePrior(NormalPrior):
    """A mixture of K Gaussians whose weights, means and variances are learned."""

    standard = False

    def __init__(
        self, latent_dim: int, image_shape: Sequence[int] = (), num_components: int = 10
    ) -> None:
        super().__init__(latent_dim)
        check_num_components(num_components)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_vars = nn.Parameter(torch.zeros(num_components, latent_dim))

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        return mixture_log_prob(z, self.logits.log_softmax(-1), self.means, self.log_vars)

    def sample(self, num_samples, encode=None, generator=None) -> Tensor:
        log_weights = self.logits.log_softmax(-1)
        return sample_mixture(num_samples, log_weights, self.means, self.log_vars, generator)


class VampPrior(NormalPrior):
    """p(z) = (1/K) sum_k q(z|u_k): the posteriors of K learned pseudo-inputs u_k (Tomczak &
    Welling 2018). The pseudo-inputs are images, hardtanh-clipped to [0, 1] and initialised near
    `init_mean`; with a flow posterior, the mixture uses the Gaussian before the flow."""

    standard = False

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        num_components: int = 500,
        init_mean: float = 0.05,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(latent_dim)
        check_num_components(num_components)
        self.pseudo_inputs = nn.Parameter(
            init_mean + init_std * torch.randn(num_components, *image_shape)
        )

    def components(self, encode: Encode) -> tuple[Tensor, Tensor, Tensor]:
        q = encode(F.hardtanh(self.pseudo_inputs, 0.0, 1.0))
        count = q.mean.shape[0]
        log_weights = torch.full_like(q.mean[:, 0], -math.log(count))
        return log_weights, q.mean, q.log_var

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        if encode is None:
            raise ValueError("the VampPrior needs the model's encoder")
        return mixture_log_prob(z, *self.components(encode))

    def sample(self, num_samples, encode=None, generator=None) -> Tensor:
        return sample_mixture(num_samples, *self.components(encode), generator)
