"""The standard normal prior p(z) = N(0, I)."""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vaelab.posteriors.gaussian import LOG_2PI, Encoded

Encode = Callable[[Tensor], Encoded]


class NormalPrior(nn.Module):
    standard = True  # N(0, I): the KL of a Gaussian posterior to it has a closed form

    def __init__(self, latent_dim: int, image_shape: Sequence[int] = ()) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        return -0.5 * (z.square() + LOG_2PI).sum(-1)

    def sample(
        self,
        num_samples: int,
        encode: Encode | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws on the CPU (a CPU generator's stream is the same on every device)."""
        return torch.randn(num_samples, self.latent_dim, generator=generator)
