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

from vaelab.vae import VAE

ACTIVITY_THRESHOLD = 0.01  # Burda et al. 2016


class ImportanceEstimate(NamedTuple):
    """Per-example float64 results of one pass of k importance samples."""

    log_likelihood: Tensor  # L_k(x), (batch,)
    reconstruction: Tensor  # (1/k) sum_i log p(x|z_i), (batch,): the ELBO's first term
    kl: Tensor  # KL(q(z|x) || p(z)), (batch,): closed form, or the mean over the k draws
    kl_per_dim: Tensor | None  # (batch, num_units), where the KL is a sum over units
    posterior_mean: Tensor  # E_q[z], (batch, num_units): closed form or the mean of the draws


@torch.no_grad()
def importance_weighted_estimate(
    model: VAE,
    x: Tensor,
    num_samples: int,
    chunk_size: int,
    generator: torch.Generator,
) -> ImportanceEstimate:
    """L_k(x) with k = num_samples, decoding chunk_size draws of z per example at a time.

    Draw i is the i-th `randn` call of `generator` whatever the chunk size, so one generator
    state gives the same estimate for every chunk size (up to float rounding). log p(x|z),
    log p(z) and log q(z|x) come from the model's parts (`VAE.weigh`), so every model with a
    density is evaluated by this same code.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"need num_samples, chunk_size >= 1, got {num_samples}, {chunk_size}")
    q = model.encode(x)
    batch, device = len(x), q.mean.device
    # log sum_i w_i, accumulated chunk by chunk: log(a + b) = logaddexp(log a, log b)
    log_sum = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
    sums: dict[str, Tensor] = {}
    closed_form_mean = model.posterior_mean(q)
    for start in range(0, num_samples, chunk_size):
        count = min(chunk_size, num_samples - start)
        eps = torch.stack(
            [
                torch.randn(
                    batch, model.noise_dim, generator=generator, device=device, dtype=q.mean.dtype
                )
                for _ in range(count)
            ]
        )
        weighed = model.weigh(x, q, eps)  # each (chunk, batch)
        log_weights = (
            weighed["log_likelihood"].double()
            + weighed["log_prior"].double()
            - weighed["log_posterior"].double()
        )
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_weights, dim=0))
        kl, kl_per_dim = model.kl_terms(q, weighed)
        parts = {
            "reconstruction": weighed["log_likelihood"].double().sum(0),
            "kl": kl.double() * count,
        }
        if closed_form_mean is None:
            parts["posterior_mean"] = weighed["z"].double().sum(0)
        if kl_per_dim is not None:
            parts["kl_per_dim"] = kl_per_dim.double() * count
        for name, value in parts.items():
            sums[name] = sums[name] + value if name in sums else value
    averages = {name: value / num_samples for name, value in sums.items()}
    if closed_form_mean is not None:
        averages["posterior_mean"] = closed_form_mean.double()
    return ImportanceEstimate(
        log_likelihood=log_sum - math.log(num_samples),
        reconstruction=averages["reconstruction"],
        kl=averages["kl"],
        kl_per_dim=averages.get("kl_per_dim"),
        posterior_mean=averages["posterior_mean"],
    )


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
