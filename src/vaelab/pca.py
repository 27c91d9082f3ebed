"""PCA as a model: the top `latent_dim` principal directions of the training set, in closed form.

With the training mean mu and covariance S = U diag(lambda) U^T (eigenvalues descending), PCA is
`linear_ae`'s two linear maps with closed-form weights (whitened, so the codes have unit
variance over the data and the prior N(0, I) decodes to plausible images):

    encoder  z = diag(lambda_1..L)^(-1/2) U_L^T (x - mu)
    decoder  x = mu + U_L diag(lambda_1..L)^(1/2) z      (the Gaussian likelihood's mean)

The decoder's mean is the orthogonal projection of x onto the principal subspace, the best
rank-L reconstruction in squared error (Eckart-Young), which is what a linear autoencoder
trained on squared error converges to (Baldi & Hornik 1989). Reconstruction metrics are the
same as every other model's, under the same Gaussian likelihood.

Under `train.py` nothing is optimised: the first training epoch accumulates sum x and
sum x x^T (torchmetrics states, summed across DDP ranks), the fit runs after its last batch,
before that epoch's validation, and later epochs change nothing (`trainer.max_epochs=1` is
enough); `global_step` stays 0. `steps_per_call` = S gives it batches S times as large, whose
moments are the same sums (so that a sweep can set S for all its models).
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from vaelab.errors import ConfigError
from vaelab.likelihoods import Gaussian, Likelihood
from vaelab.nets.linear import LinearDecoder, LinearEncoder
from vaelab.vae import VAE


class SecondMoments(Metric):
    """The mean and the (population) covariance of flattened images, from float64 sums."""

    full_state_update = False

    def __init__(self, num_dims: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(num_dims, dtype=torch.float64), dist_reduce_fx="sum")
        outer = torch.zeros(num_dims, num_dims, dtype=torch.float64)
        self.add_state("total_outer", outer, dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor) -> None:
        values = x.flatten(start_dim=1).double()
        self.total += values.sum(0)
        self.total_outer += values.T @ values
        self.count += values.shape[0]

    def compute(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.count
        return mean, self.total_outer / self.count - torch.outer(mean, mean)


class PCA(VAE):
    step_takes_any_batch = True  # a call's S batches add the same moments as S calls

    def __init__(
        self,
        likelihood: Likelihood,
        image_shape: Sequence[int],
        latent_dim: int = 10,
        steps_per_call: int = 1,
    ) -> None:
        if not isinstance(likelihood, Gaussian):
            raise ConfigError(
                "model=pca decodes to pixel means: use model/likelihood=gaussian (fixed variance)"
            )
        super().__init__(
            LinearEncoder,
            LinearDecoder,
            likelihood,
            image_shape,
            latent_dim,
            stochastic=False,
            steps_per_call=steps_per_call,  # the datamodule's batches: S data.batch_size
        )
        if latent_dim > self.num_dims:
            raise ConfigError(f"model.latent_dim={latent_dim} exceeds the {self.num_dims} pixels")
        self.requires_grad_(False)
        self.automatic_optimization = False
        self.moments = SecondMoments(self.num_dims)
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_moments(self, mean: Tensor, covariance: Tensor) -> None:
        """Set the encoder and decoder weights from the data's mean and covariance."""
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())  # ascending
        variances = eigenvalues.flip(0)[: self.latent_dim]
        directions = eigenvectors.flip(1)[:, : self.latent_dim]  # U_L, (D, L)
        # floor the variances so directions the data does not vary in still encode finitely
        scales = variances.clamp(min=torch.finfo(torch.float32).eps * eigenvalues[-1]).sqrt()
        mean = mean.double()
        encoder, decoder = self.encoder.net[0], self.decoder.net[0]
        encoder.weight.copy_((directions / scales).T)
        encoder.bias.copy_(-(directions / scales).T @ mean)
        decoder.weight.copy_(directions * scales)
        decoder.bias.copy_(mean)
        self.fitted.fill_(True)

    def fit_images(self, images: Tensor) -> None:
        """Fit to a tensor of images (N, C, H, W) in one go."""
        moments = SecondMoments(self.num_dims).to(images.device)
        moments.update(images)
        self.fit_moments(*moments.compute())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Accumulate the first epoch's moments and fit after its last batch; no loss to descend."""
        if not self.fitted:
            self.moments.update(batch[0])
            if batch_idx == self.trainer.num_training_batches - 1:
                self.fit_moments(*self.moments.compute())
                self.moments.reset()
        return torch.zeros((), device=self.device)  # for callbacks that watch the loss

    def configure_optimizers(self) -> None:
        return None
