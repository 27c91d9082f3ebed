"""A linear-Gaussian VAE whose log p(x) and ELBO are known in closed form.

p(z) = N(0, I), p(x|z) = N(W z + b, s2 I)  =>  p(x) = N(b, W W^T + s2 I).
q(z|x) = N(A (x - b), diag(v)) with A the exact posterior mean's map and v a deliberately wrong
(doubled) variance, so that ELBO < log p(x) strictly and L_k has room to climb.
"""

import math

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from vaelab.likelihoods import Gaussian
from vaelab.nets.linear import LinearDecoder, LinearEncoder
from vaelab.vae import VAE

IMAGE_SHAPE = (1, 2, 2)  # D = 4 pixels
LATENT_DIM = 2
NOISE_VARIANCE = 0.25


def linear_gaussian_vae(dtype: torch.dtype = torch.float64) -> VAE:
    weight = torch.tensor([[1.0, 0.3], [0.5, -1.2], [-0.4, 0.8], [0.2, 0.1]], dtype=dtype)
    bias = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=dtype)
    model = VAE(
        LinearEncoder,
        LinearDecoder,
        Gaussian(NOISE_VARIANCE),
        image_shape=IMAGE_SHAPE,
        latent_dim=LATENT_DIM,
    ).to(dtype)
    precision = weight.T @ weight / NOISE_VARIANCE + torch.eye(LATENT_DIM, dtype=dtype)
    posterior_cov = torch.linalg.inv(precision)
    mean_map = posterior_cov @ weight.T / NOISE_VARIANCE  # E[z|x] = A (x - b)
    log_var = torch.log(2 * posterior_cov.diagonal())
    with torch.no_grad():
        decoder, encoder = model.decoder.net[0], model.encoder.net[0]
        decoder.weight.copy_(weight)
        decoder.bias.copy_(bias)
        encoder.weight.zero_()
        encoder.weight[:LATENT_DIM] = mean_map
        encoder.bias[:LATENT_DIM] = -mean_map @ bias
        encoder.bias[LATENT_DIM:] = log_var
    return model


def parts(model: VAE) -> tuple[Tensor, Tensor]:
    decoder = model.decoder.net[0]
    return decoder.weight.detach(), decoder.bias.detach()


def sample_data(model: VAE, count: int, seed: int = 0) -> Tensor:
    """x ~ p(x), shaped as images."""
    weight, bias = parts(model)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, LATENT_DIM, generator=generator, dtype=weight.dtype)
    noise = torch.randn(count, weight.shape[0], generator=generator, dtype=weight.dtype)
    return (z @ weight.T + bias + math.sqrt(NOISE_VARIANCE) * noise).view(count, *IMAGE_SHAPE)


def exact_log_likelihood(model: VAE, x: Tensor) -> Tensor:
    """log N(x; b, W W^T + s2 I) per example."""
    weight, bias = parts(model)
    covariance = weight @ weight.T + NOISE_VARIANCE * torch.eye(len(bias), dtype=weight.dtype)
    return MultivariateNormal(bias, covariance).log_prob(x.flatten(1).to(weight.dtype))


@torch.no_grad()
def exact_elbo(model: VAE, x: Tensor) -> dict[str, Tensor]:
    """E_q[log p(x|z)] and KL(q || p(z)) in closed form for q = N(m, diag(v)).

    E_q[log p(x|z)] = -D/2 log(2 pi s2) - (||x - W m - b||^2 + sum_j v_j ||W_j||^2) / (2 s2)
    """
    weight, bias = parts(model)
    mean, log_var, _ = model.encode(x.to(weight.dtype))
    variance = log_var.exp()
    residual = x.flatten(1) - mean @ weight.T - bias
    spread = (variance * weight.square().sum(0)).sum(-1)
    dims = len(bias)
    reconstruction = -0.5 * dims * math.log(2 * math.pi * NOISE_VARIANCE) - (
        residual.square().sum(-1) + spread
    ) / (2 * NOISE_VARIANCE)
    kl = 0.5 * (mean.square() + variance - 1 - log_var).sum(-1)
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
