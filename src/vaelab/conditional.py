"""What the models with a class label y in the generative model share (M2, the CVAE):
q(z|x,y), p(x|y,z) with the code [z, onehot(y)] as the decoder's input, p(z) = N(0, I), p(y)
uniform over K classes; the labelled bound L(x, y), prior samples and the analogies picture.
"""

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from vaelab.errors import ConfigError
from vaelab.posteriors.gaussian import Encoded, gaussian_kl
from vaelab.vae import VAE


class ClassConditional(VAE):
    """`latent_dim` is z's size; the decoder takes [z, onehot(y)] and the encoder [x, onehot(y)]."""

    def __init__(self, *args: Any, num_classes: int = 10, **kwargs: Any) -> None:
        z_dim, encoder = kwargs.pop("latent_dim", 50), kwargs["encoder"]
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {num_classes}")
        super().__init__(*args, latent_dim=z_dim + num_classes, **kwargs)
        if self.objective != "elbo" or not self.stochastic or self.free_bits > 0:
            raise ConfigError(
                f"model={type(self).__name__.lower()} trains its own bounds: keep "
                "model.objective=elbo and model.free_bits=0"
            )
        if not (self.posterior.gaussian and self.prior.standard):
            raise ConfigError(
                f"model={type(self).__name__.lower()} needs model/posterior=gaussian and "
                "model/prior=normal (its bounds take the KL in closed form)"
            )
        self.remember(z_dim=z_dim, num_classes=num_classes)
        posterior = type(self.posterior)
        self.posterior, self.prior = posterior(z_dim), type(self.prior)(z_dim)
        pixels = math.prod(self.image_shape)
        self.encoder = encoder((pixels + num_classes,), self.posterior.num_features)  # [x, y]
        if kwargs.get("compile"):
            self.encoder.compile()

    @property
    def closed_form_kl(self) -> bool:
        return False  # the code [z, onehot(y)] is not a Gaussian's mean: no KL per code unit

    def class_codes(self, y: Tensor) -> Tensor:
        return F.one_hot(y, self.num_classes).to(self.dtype)

    def posterior_given(self, x: Tensor, onehot: Tensor) -> Encoded:
        """q(z|x,y)'s mean and log-variance, y one-hot."""
        return self.posterior.split(self.encoder(torch.cat([x.flatten(1), onehot], dim=1)))

    def bound(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """L(x, y) per example and its terms, one draw of z ~ q(z|x,y)."""
        onehot = self.class_codes(y)
        q = self.posterior_given(x, onehot)
        eps = torch.randn_like(q.mean)
        z, _ = self.posterior.rsample(q, eps[None])
        decoded = self.decoder(torch.cat([z[0], onehot], dim=1))
        reconstruction = self.likelihood.log_prob(x, decoded)
        kl = gaussian_kl(q.mean, q.log_var).sum(-1)
        log_prior_y = -math.log(self.num_classes)
        return {
            "elbo": reconstruction + log_prior_y - kl,
            "reconstruction": reconstruction,
            "kl": kl,
        }

    def class_bounds(self, x: Tensor) -> Tensor:
        """L(x, y) for every class y, (batch, classes)."""
        classes = torch.arange(self.num_classes, device=x.device).repeat_interleave(len(x))
        bounds = self.bound(x.repeat(self.num_classes, *[1] * (x.dim() - 1)), classes)["elbo"]
        return bounds.view(self.num_classes, len(x)).T

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """E[x|y,z] for y uniform over the classes and z ~ N(0, I)."""
        z = torch.randn(num_samples, self.z_dim, generator=generator)
        y = torch.randint(self.num_classes, (num_samples,), generator=generator)
        codes = torch.cat([z, F.one_hot(y, self.num_classes).float()], dim=1)
        return self.decode_mean(codes.to(self.device, self.dtype))

    def extra_pictures(self, images: Tensor) -> dict[str, tuple[Tensor, int]]:
        """analogies.png: ten images, each beside its z decoded with every class."""
        return {"analogies": (self.analogies(images[:10]), self.num_classes + 1)}

    @torch.no_grad()
    def analogies(self, images: Tensor) -> Tensor:
        """(N * (K + 1), C, H, W): per image, itself, then its z decoded with each class."""
        codes = self.code(images)
        z = codes[:, : self.z_dim].repeat_interleave(self.num_classes, dim=0)
        classes = torch.arange(self.num_classes, device=images.device).repeat(len(images))
        decoded = self.decode_mean(torch.cat([z, self.class_codes(classes)], dim=1))
        decoded = decoded.view(len(images), self.num_classes, *images.shape[1:])
        return torch.cat([images[:, None], decoded], dim=1).flatten(0, 1)
