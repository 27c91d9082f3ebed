"""Inverse autoregressive flow on top of the diagonal Gaussian (Kingma et al. 2016).

z_0 = mean + sigma * eps, then for t = 1..T, with [m_t, s_t] = MADE_t(z_{t-1}, h):

    sigma_t = sigmoid(s_t),   z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t

(the numerically stable form of the paper's eq. 10-11). Output j of MADE_t sees only inputs
before j, so the Jacobian dz_t/dz_{t-1} is triangular with diagonal sigma_t and

    log q(z_T|x) = log N(z_0; mean, diag var) - sum_t sum_j log sigma_t,j.

The variable order is reversed between steps, so each dimension is conditioned on every other
one after two steps. The context h is extra encoder output fed to every hidden layer.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import ConfigError
from vaelab.posteriors.gaussian import Encoded, GaussianPosterior


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive net (Germain et al. 2015): outputs m, s of dimension j depend only on
    inputs 0..j-1 (and on the context h, which reaches every hidden unit)."""

    def __init__(self, dim: int, hidden_dims: Sequence[int], context_dim: int) -> None:
        super().__init__()
        # degrees: input j has degree j + 1; a hidden unit of degree d sees inputs of degree <= d;
        # output j (degree j + 1) sees hidden units of degree < j + 1.
        degrees = [torch.arange(1, dim + 1)]
        for width in hidden_dims:
            degrees.append(torch.arange(width) % max(dim - 1, 1) + 1)
        layers = [
            MaskedLinear(degrees[i + 1][:, None] >= degrees[i][None, :])
            for i in range(len(hidden_dims))
        ]
        self.hidden = nn.ModuleList(layers)
        self.context = nn.ModuleList(nn.Linear(context_dim, width) for width in hidden_dims)
        output_mask = degrees[0][:, None] > degrees[-1][None, :]
        self.output = MaskedLinear(output_mask.repeat(2, 1))  # m and s

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out = z
        for layer, context in zip(self.hidden, self.context, strict=True):
            out = F.elu(layer(out) + context(h))
        m, s = self.output(out).chunk(2, dim=-1)
        return m, s


class IAFPosterior(GaussianPosterior):
    """q(z|x): the diagonal Gaussian followed by `num_steps` IAF steps (module docstring)."""

    gaussian = False

    def __init__(
        self,
        latent_dim: int,
        num_steps: int = 2,
        hidden_dims: Sequence[int] = (320, 320),
        context_dim: int = 50,
        sigmoid_bias: float = 2.0,
    ) -> None:
        super().__init__(latent_dim)
        if num_steps < 1 or context_dim < 1 or not hidden_dims:
            raise ConfigError(
                "model.posterior needs num_steps >= 1, context_dim >= 1 and at least one hidden "
                f"layer, got {num_steps}, {context_dim}, {list(hidden_dims)}"
            )
        self.context_dim = context_dim
        self.steps = nn.ModuleList(
            MADE(latent_dim, hidden_dims, context_dim) for _ in range(num_steps)
        )
        with torch.no_grad():  # sigma_t = sigmoid(s) starts near 1: each step starts near identity
            for step in self.steps:
                step.output.bias[latent_dim:] = sigmoid_bias

    @property
    def num_features(self) -> int:
        return 2 * self.latent_dim + self.context_dim

    def split(self, features: Tensor) -> Encoded:
        mean, log_var, context = features.split(
            [self.latent_dim, self.latent_dim, self.context_dim], dim=-1
        )
        return Encoded(mean, log_var, context)

    def flow(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z_T and sum_t log |det dz_t/dz_{t-1}|, for z (..., batch, latent_dim)."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for index, step in enumerate(self.steps):
            if index > 0:
                z = z.flip(-1)
            m, s = step(z, context.expand(*z.shape[:-1], -1))
            gate = torch.sigmoid(s)
            z = gate * z + (1 - gate) * m
            log_det = log_det + F.logsigmoid(s).sum(-1)
        return z, log_det

    def rsample(self, q: Encoded, eps: Tensor) -> tuple[Tensor, Tensor]:
        z, log_q = super().rsample(q, eps)
        z, log_det = self.flow(z, q.context)
        return z, log_q - log_det

    def draw(self, q: Encoded, eps: Tensor) -> Tensor:
        """rsample's z alone: the Gaussian draw moved by the flow (not the inherited one)."""
        return self.flow(super().draw(q, eps), q.context)[0]

    def mean(self, q: Encoded) -> Tensor | None:
        return None

    def code(self, q: Encoded) -> Tensor:
        return self.flow(q.mean, q.context)[0]
