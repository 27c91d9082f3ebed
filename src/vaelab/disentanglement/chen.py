"""Chen et al. 2018's own MIG estimator, from the whole diagonal-Gaussian posterior q(z|x).

For one draw z_n ~ q(z|x_n) per data point and each unit j:
    H(z_j)       ~ -mean_n log q(z_nj),      q(z_j) = mean_m q(z_j | x_m) over all N points
    H(z_j | v_k) ~ -mean_n log q(z_nj | v),  q(z_j | v) = mean_m q(z_j | x_m) over the points
                                             whose factor k has x_n's value v
    I(z_j; v_k)  = H(z_j) - H(z_j | v_k)
MIG = mean_k (I_top - I_second) / H(v_k), H(v_k) the factor's empirical entropy. Chen et al.
(their `mi_metric.py`) take every image of dSprites as the points; here they are the uniformly
drawn factor classes of the report, so the mixtures are that sample's.
"""

import math

import numpy as np
import torch
from torch import Tensor

from vaelab.disentanglement.arrays import Array, as_numpy
from vaelab.disentanglement.information import mig_from_information

LOG_2PI = math.log(2 * math.pi)


def _log_mixture(z: Tensor, mean: Tensor, log_var: Tensor, chunk: int) -> Tensor:
    """log mean_m N(z_nj; mean_mj, exp(log_var_mj)) for each n and j: (N, L), float64."""
    out = []
    for start in range(0, len(z), chunk):
        part = z[start : start + chunk, None, :]  # (n, 1, L) against the (M, L) components
        log_pdf = -0.5 * (LOG_2PI + log_var + (part - mean) ** 2 / log_var.exp())
        out.append(torch.logsumexp(log_pdf, dim=1) - math.log(len(mean)))
    return torch.cat(out)


def chen_mutual_information(
    samples: Array, mean: Array, log_var: Array, factors: Array, chunk: int = 256
) -> np.ndarray:
    """I(z_j; v_k) in nats, (L, K), by the estimator of the module docstring: `samples` one draw
    of q(z|x_n) per point, (N, L); q's `mean` and `log_var`, (N, L); `factors` (N, K) classes."""
    z, mu, lv = (
        torch.as_tensor(as_numpy(a), dtype=torch.float64) for a in (samples, mean, log_var)
    )
    factors = as_numpy(factors)
    entropy = -_log_mixture(z, mu, lv, chunk).mean(0)  # H(z_j), (L,)
    information = np.zeros((z.shape[1], factors.shape[1]))
    for k, factor in enumerate(factors.T):
        conditional = torch.zeros(z.shape[1], dtype=torch.float64)
        for value in np.unique(factor):
            rows = torch.from_numpy(np.flatnonzero(factor == value))
            log_q = _log_mixture(z[rows], mu[rows], lv[rows], chunk)
            conditional -= log_q.sum(0) / len(z)  # p(v) H(z_j | v) summed over v
        information[:, k] = (entropy - conditional).numpy()
    return information


def mig_chen(samples: Array, mean: Array, log_var: Array, factors: Array) -> float:
    """MIG (Chen et al. 2018) with their estimator of I(z_j; v_k) (module docstring)."""
    information = chen_mutual_information(samples, mean, log_var, factors)
    return mig_from_information(information, factors)
