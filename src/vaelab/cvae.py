"""The conditional VAE (Kingma et al. 2014's M2 with y always observed; Sohn et al. 2015):
q(z|x,y), p(x|y,z), p(z) = N(0, I), trained on labelled images by the ELBO of log p(x|y).

A batch's x is [flattened image, onehot(y)] (`observed`), so the VAE's training step, its
validation and the importance-weighted evaluation apply unchanged: test/nll is -log p(x|y).
Pictures start from images alone: their class is the one of highest bound L(x, y), so the CVAE
is also a generative classifier; samples draw y uniformly.
"""

import math

import torch
from torch import Tensor

from vaelab.conditional import ClassConditional
from vaelab.errors import ConfigError
from vaelab.posteriors.gaussian import Encoded, gaussian_kl


class CVAE(ClassConditional):
    @property
    def num_units(self) -> int:
        return self.z_dim

    @property
    def noise_dim(self) -> int:
        return self.z_dim

    def observed(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """[x flattened, onehot(y)], (batch, pixels + classes)."""
        images, labels = batch
        if labels.dim() != 1:
            raise ConfigError(
                "model=cvae needs one class label per image (data=mnist, fashion_mnist or "
                f"cifar10); this dataset's labels have shape {tuple(labels.shape[1:])} each"
            )
        return torch.cat([images.flatten(1), self.class_codes(labels)], dim=1)

    def split_observed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The images and the one-hot labels of `observed`'s x."""
        pixels = math.prod(self.image_shape)
        return x[:, :pixels].view(-1, *self.image_shape), x[:, pixels:]

    def weigh(
        self, x: Tensor, q: Encoded, eps: Tensor, densities: bool = True
    ) -> dict[str, Tensor]:
        """VAE.weigh for p(x|y): draws z ~ q(z|x,y), decoded with y."""
        images, onehot = self.split_observed(x)
        if densities:
            z, log_posterior = self.posterior.rsample(q, eps)
        else:
            z = self.posterior.draw(q, eps)
        codes = torch.cat([z, onehot.expand(len(z), -1, -1)], dim=-1)
        weighed = {"z": z, "log_likelihood": self.likelihood.log_prob(images, self.decoder(codes))}
        if densities:
            weighed |= {"log_prior": self.prior.log_prob(z), "log_posterior": log_posterior}
        return weighed

    @property
    def kl_from_densities(self) -> bool:
        return False  # kl_terms: closed form

    def kl_terms(self, q: Encoded, weighed: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """KL(q(z|x,y) || N(0, I)) in closed form, per example and per unit of z."""
        kl_per_dim = gaussian_kl(q.mean, q.log_var)
        return kl_per_dim.sum(-1), kl_per_dim

    def code(self, images: Tensor) -> Tensor:
        """[E q(z|x,y), onehot(y)] at the class y of highest bound L(x, y) (one draw each)."""
        onehot = self.class_codes(self.class_bounds(images).argmax(1))
        return torch.cat([self.posterior_given(images, onehot).mean, onehot], dim=1)
