"""Decoder likelihoods p(x|z): log-densities in nats, summed over every pixel of an example.

Each likelihood turns the decoder's raw output into a distribution over images. The decoder emits
`num_params` values per pixel (per channel); `log_prob` sums log p(x|z) over all dimensions, so
the reconstruction term of the ELBO is in nats per example, every constant included.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vaelab.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


class Likelihood(nn.Module):
    """p(x|z) given the decoder's output `params` of shape (..., num_params * C, H, W)."""

    num_params: int = 1
    discrete: bool = False  # True when p(x|z) is a probability mass (binary data), not a density

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) in nats, summed over all but the leading (batch/sample) dimensions."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z]: what images show for a decoded code."""
        raise NotImplementedError

    def check_data(self, binary: bool) -> None:
        """Raise ConfigError when the data cannot come from this likelihood."""


def _sum_pixels(values: Tensor, event_dims: int = 3) -> Tensor:
    return values.flatten(start_dim=values.dim() - event_dims).sum(-1)


class BernoulliLogProb(torch.autograd.Function):
    """sum_d x_d l_d - softplus(l_d) over the pixels (C, H, W) of each example, for logits l and
    data x broadcast to them, with softplus(l) = max(l, 0) + log(1 + exp(-|l|)); its gradient in
    l is (x - sigmoid(l)) times the incoming one, written out (so no double backward).

    On a CPU, torch's binary_cross_entropy_with_logits and softplus take 3 to 4 times as long
    forward and backward (log1p is not vectorised there; README, speed).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(logits, x)
        softplus = logits.abs().neg_().exp_().add_(1).log_().add_(logits.relu())
        return -_sum_pixels(torch.addcmul(softplus, x, logits, value=-1))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        logits, x = ctx.saved_tensors
        grad = grad.reshape(*grad.shape, 1, 1, 1)
        needs_logits, needs_x = ctx.needs_input_grad
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(-grad) if needs_logits else None
        grad_x = (logits * grad).sum_to_size(x.shape) if needs_x else None
        return grad_logits, grad_x


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the decoder outputs logits.

    log p(x|z) = sum_d x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d)
               = sum_d x_d l_d - log(1 + exp(l_d))
    On a CPU by BernoulliLogProb; elsewhere, and inside torch.compile (whose fused kernel does
    as well), by torch's fused binary_cross_entropy_with_logits.
    Half-precision logits are taken in float32, as autocast does for the latter.
    """

    discrete = True

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        if params.dtype in (torch.float16, torch.bfloat16):
            params = params.float()
        if params.device.type == "cpu" and not torch.compiler.is_compiling():
            return BernoulliLogProb.apply(params, x.to(params.dtype))
        return -_sum_pixels(
            F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        )

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def check_data(self, binary: bool) -> None:
        if not binary:
            raise ConfigError(
                "model.likelihood=bernoulli needs binary pixels, but this dataset has grey levels: "
                "binarise it (data.binarize=dynamic or static) or use model/likelihood=gaussian"
            )


class Gaussian(Likelihood):
    """Gaussian pixels with a fixed variance c; the decoder outputs the means.

    log p(x|z) = -sum_d (x_d - mu_d)^2 / (2c) - D/2 log(2 pi c)
    so the squared error is weighted by C = 1/(2c): a smaller c trusts the reconstruction more,
    which is the same trade-off as a larger KL weight beta = 2c (up to a constant factor).
    """

    def __init__(self, variance: float = 1.0) -> None:
        super().__init__()
        if variance <= 0:
            raise ConfigError(f"model.likelihood.variance must be > 0, got {variance}")
        self.variance = variance

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        squared_error = (x - params).square()
        return -_sum_pixels(
            squared_error / (2 * self.variance) + 0.5 * (LOG_2PI + math.log(self.variance))
        )

    def mean(self, params: Tensor) -> Tensor:
        return params


class GaussianLearnedVariance(Likelihood):
    """Gaussian pixels whose mean and log-variance both come from the decoder.

    The log-variance is clamped below at `min_log_var`: on data with few grey levels a free
    variance shrinks towards zero and the density grows without bound.
    """

    num_params = 2

    def __init__(self, min_log_var: float = -9.0) -> None:
        super().__init__()
        self.min_log_var = min_log_var

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = params.chunk(2, dim=-3)
        return mean, log_var.clamp(min=self.min_log_var)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mean, log_var = self.split(params)
        return -0.5 * _sum_pixels((x - mean).square() * torch.exp(-log_var) + log_var + LOG_2PI)

    def mean(self, params: Tensor) -> Tensor:
        return self.split(params)[0]
