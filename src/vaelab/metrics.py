"""Evaluation metrics: the importance-weighted log-likelihood estimate, active units, KL per unit.

Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders":

    L_k(x) = log (1/k) sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

E[L_1] is the ELBO, E[L_k] <= E[L_{k+1}] <= log p(x), and L_k -> log p(x) as k grows; the papers
report -mean_x L_5000(x) as the test NLL. A latent unit u is active when
A_u = Cov_x(E_q(u|x)[u]) > 0.01: the posterior mean of an inactive unit ignores the input.

The metric states are torchmetrics states, so they add up across DDP ranks when computed.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from vaelab.vae import VAE, log_prior_ratio, reparameterize

ACTIVITY_THRESHOLD = 0.01  # Burda et al. 2016


class ImportanceEstimate(NamedTuple):
    """Per-example float64 results of one pass of k importance samples."""

    log_likelihood: Tensor  # L_k(x), (batch,)
    reconstruction: Tensor  # (1/k) sum_i log p(x|z_i), (batch,): the ELBO's first term


@torch.no_grad()
def importance_weighted_estimate(
    model: VAE,
    x: Tensor,
    num_samples: int,
    chunk_size: int,
    generator: torch.Generator,
    posterior: tuple[Tensor, Tensor] | None = None,
) -> ImportanceEstimate:
    """L_k(x) with k = num_samples, decoding chunk_size draws of z per example at a time.

    Draw i is the i-th `randn` call of `generator` whatever the chunk size, so one generator
    state gives the same estimate for every chunk size (up to float rounding). `posterior` is
    model.encode(x) when the caller has it already.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"need num_samples, chunk_size >= 1, got {num_samples}, {chunk_size}")
    mean, log_var = posterior if posterior is not None else model.encode(x)
    # log sum_i w_i, accumulated chunk by chunk: log(a + b) = logaddexp(log a, log b)
    log_sum = torch.full(mean.shape[:1], -math.inf, dtype=torch.float64, device=mean.device)
    reconstruction_sum = torch.zeros_like(log_sum)
    for start in range(0, num_samples, chunk_size):
        eps = torch.stack(
            [
                torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                for _ in range(min(chunk_size, num_samples - start))
            ]
        )
        z = reparameterize(mean, log_var, eps)  # (chunk, batch, latent_dim)
        log_likelihood = model.likelihood.log_prob(x, model.decode(z))
        # log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), summed in float64
        log_weights = log_likelihood.double() + log_prior_ratio(z, eps, log_var).double()
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_weights, dim=0))
        reconstruction_sum += log_likelihood.double().sum(0)
    return ImportanceEstimate(log_sum - math.log(num_samples), reconstruction_sum / num_samples)


class MeanPerDimension(Metric):
    """The mean over examples of (batch, dims) values, one per dimension (e.g. KL per unit)."""

    full_state_update = False

    def __init__(self, num_dims: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(num_dims, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.total += values.double().sum(0)
        self.count += values.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count


class UnitActivity(MeanPerDimension):
    """A_u = Cov_x(E_q[u]) per latent unit: the sample variance over x of the posterior mean.

    Accumulated as sums of the means and of their squares in float64:
    A_u = (sum m_u^2 - n mean(m_u)^2) / (n - 1).
    """

    def __init__(self, latent_dim: int, **kwargs) -> None:
        super().__init__(latent_dim, **kwargs)
        zeros = torch.zeros(latent_dim, dtype=torch.float64)
        self.add_state("total_square", zeros, dist_reduce_fx="sum")

    def update(self, posterior_mean: Tensor) -> None:
        super().update(posterior_mean)
        self.total_square += posterior_mean.double().square().sum(0)

    def compute(self) -> Tensor:
        average = super().compute()
        return (self.total_square - self.count * average.square()) / (self.count - 1)


def count_active_units(activity: Tensor, threshold: float = ACTIVITY_THRESHOLD) -> int:
    """How many units have A_u > threshold (Burda et al. 2016: 0.01)."""
    return int((activity > threshold).sum())
