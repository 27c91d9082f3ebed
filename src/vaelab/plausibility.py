"""Is a generated image a plausible sprite? One connected object, of a realistic size.

An image passes when its pixels above `threshold` form exactly one connected component and its
mean intensity lies within the 1st-99th percentile band of real images' mean intensities. The
share of plausible prior samples measures what the KL term promises: a regular latent space,
where draws from the prior decode to images like the data (sprites, and MNIST digits).
"""

import numpy as np
import torch
from lightning import LightningDataModule
from scipy import ndimage
from torch import Tensor

from vaelab.vae import VAE

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)  # ndimage.label's structure for 8-connectivity
MAX_IMAGES = 10_000  # validation images for the band, training images for a fitted Gaussian


def mean_intensity(images: Tensor) -> Tensor:
    """The mean pixel of each image (N, C, H, W), in float64."""
    return images.detach().to("cpu", torch.float64).flatten(1).mean(1)


def count_objects(images: Tensor, threshold: float = 0.5) -> Tensor:
    """Connected components (8-connectivity) of pixels > threshold, channels averaged, per image."""
    masks = (images.detach().float().mean(1) > threshold).cpu().numpy()
    counts = [ndimage.label(mask, structure=EIGHT_NEIGHBOURS)[1] for mask in masks]
    return torch.tensor(counts, dtype=torch.long)


def intensity_band(images: Tensor, low: float = 0.01, high: float = 0.99) -> tuple[float, float]:
    """The `low` and `high` quantiles (interpolated as numpy does) of per-image mean intensity."""
    quantiles = torch.quantile(
        mean_intensity(images), torch.tensor([low, high], dtype=torch.float64)
    )
    return float(quantiles[0]), float(quantiles[1])


def plausible(images: Tensor, band: tuple[float, float], threshold: float = 0.5) -> Tensor:
    """Per image: exactly one object and a mean intensity within `band` (inclusive)."""
    means = mean_intensity(images)
    return (count_objects(images, threshold) == 1) & (means >= band[0]) & (means <= band[1])


@torch.no_grad()
def fitted_gaussian_samples(
    model: VAE, train_images: Tensor, num_samples: int, generator: torch.Generator
) -> Tensor:
    """E[x|z] for z drawn from the full-covariance Gaussian fitted to the model's codes of
    `train_images`: what an autoencoder, whose codes have no prior, generates."""
    codes = torch.cat([model.code(chunk.to(model.device)) for chunk in train_images.split(1000)])
    codes = codes.to("cpu", torch.float64)
    covariance = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
    jitter = 1e-9 * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=torch.float64)
    eps = torch.randn(num_samples, codes.shape[1], generator=generator, dtype=torch.float64)
    z = codes.mean(0) + eps @ torch.linalg.cholesky(covariance + jitter).T
    return model.decode_mean(z.to(model.device, model.dtype))


@torch.no_grad()
def regularity(
    model: VAE, datamodule: LightningDataModule, num_samples: int, seed: int, split: str = "test"
) -> dict[str, float]:
    """Whether the latent space is regular: against the band of the validation images (the
    training images' where there is no val split), the plausible shares of `num_samples`
    images generated from the prior (from `fitted_gaussian_samples` without one), and of the
    split's images (at most 10,000) and their reconstructions; and the reconstructions' squared
    error per image (the sum over pixels of (x - E[x|z])^2, z the code of x)."""
    was_training = model.training
    model.eval()
    datamodule.setup("test")
    reference = "val" if "val" in datamodule.datasets else "train"  # val_size=0: no val split
    band = intensity_band(datamodule.example_images(reference, MAX_IMAGES))
    images = datamodule.example_images(split, MAX_IMAGES)
    generator = torch.Generator().manual_seed(seed)
    if model.has_prior:
        samples = model.sample(num_samples, generator)
    else:
        train_images = datamodule.example_images("train", MAX_IMAGES)
        samples = fitted_gaussian_samples(model, train_images, num_samples, generator)
    reconstructions = torch.cat(
        [model.reconstruct(chunk.to(model.device)).cpu() for chunk in images.split(1000)]
    )
    model.train(was_training)
    error = (reconstructions.double() - images.double()).square().flatten(1).sum(1)
    return {
        "plausible_samples": float(plausible(samples, band).double().mean()),
        "plausible_reconstructions": float(plausible(reconstructions, band).double().mean()),
        "plausible_data": float(plausible(images, band).double().mean()),
        "squared_error": float(error.mean()),
    }
