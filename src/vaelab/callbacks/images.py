"""Pictures of the latent space: prior samples, reconstructions, interpolations, traversals.

At the end of every `every_n_epochs`-th validation epoch (and after testing) the callback decodes
fixed codes and fixed validation images, saves each grid as a PNG under `<run>/images/` and logs
it to W&B or TensorBoard. Rank zero only. Decoded images show E[x|z] (pixel probabilities for
a Bernoulli decoder), not noisy draws. `evaluate.py eval.images=true` writes the same pictures
of any checkpoint.
"""

from pathlib import Path

import torch
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vaelab.posteriors.gaussian import gaussian_kl
from vaelab.vae import VAE


@torch.no_grad()
def reconstructions(model: VAE, images: Tensor) -> Tensor:
    """Inputs in the odd rows, their reconstructions in the even rows below them."""
    rows = []
    for chunk in images.split(8):
        rows += [chunk, model.reconstruct(chunk)]
    return torch.cat(rows)


@torch.no_grad()
def interpolations(model: VAE, images: Tensor, steps: int) -> Tensor:
    """Each row decodes codes on the straight line between the codes of two images."""
    codes = model.code(images)
    start, end = codes[0::2], codes[1::2]
    count = min(len(start), len(end))
    weights = torch.linspace(0, 1, steps, device=codes.device).view(1, steps, 1)
    line = start[:count, None] * (1 - weights) + end[:count, None] * weights
    return model.decode_mean(line.flatten(0, 1))


@torch.no_grad()
def traversals(model: VAE, image: Tensor, steps: int, limit: float = 2.0) -> Tensor:
    """Row i varies latent dimension i over [-limit, limit] from the code of one image.

    For a VAE with a closed-form KL rows go in order of decreasing KL on the image (the
    dimensions it uses first), for other VAEs in index order;
    for an autoencoder, whose codes have no prior, each row spans that dimension's range in
    `model`'s codes of the batch it was given.
    """
    mean = model.code(image[None])[0]
    order = torch.arange(model.latent_dim, device=mean.device)
    if not model.stochastic:
        low, high = mean - limit, mean + limit
    else:
        if model.closed_form_kl:  # then the code is the posterior's mean
            log_var = model.encode(image[None]).log_var[0]
            order = gaussian_kl(mean, log_var).argsort(descending=True)
        low = torch.full_like(mean, -limit)
        high = torch.full_like(mean, limit)
    values = torch.linspace(0, 1, steps, device=mean.device)
    codes = mean.repeat(model.latent_dim, steps, 1)  # (dims, steps, latent_dim)
    for row, dim in enumerate(order):
        codes[row, :, dim] = low[dim] + (high[dim] - low[dim]) * values
    return model.decode_mean(codes.flatten(0, 1))


class LatentImages(Callback):
    def __init__(
        self,
        num_samples: int = 64,
        num_images: int = 32,
        steps: int = 10,
        every_n_epochs: int = 1,
        seed: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.num_images = num_images
        self.steps = steps
        self.every_n_epochs = every_n_epochs
        self.seed = seed

    @torch.no_grad()
    def write(
        self, model: VAE, datamodule: LightningDataModule, split: str, folder: Path
    ) -> dict[str, Tensor]:
        """Save the pictures of the split's first images as PNGs in folder; return the grids."""
        images = datamodule.example_images(split, self.num_images).to(model.device)
        generator = torch.Generator().manual_seed(self.seed)
        was_training = model.training
        model.eval()
        pictures = {
            "samples": (model.sample(self.num_samples, generator=generator), 8),
            "reconstructions": (reconstructions(model, images), 8),
            "interpolations": (interpolations(model, images[:16], self.steps), self.steps),
            "traversals": (traversals(model, images[0], self.steps), self.steps),
        }
        model.train(was_training)
        folder.mkdir(parents=True, exist_ok=True)
        grids = {}
        for name, (tensor, row_length) in pictures.items():
            grid = make_grid(tensor.float().clamp(0, 1).cpu(), nrow=row_length, pad_value=0.5)
            name = name if split == "val" else f"{split}_{name}"
            save_image(grid, folder / f"{name}.png")
            grids[name] = grid
        return grids

    @rank_zero_only
    def save(self, trainer: Trainer, model: LightningModule, split: str) -> None:
        folder = Path(trainer.default_root_dir) / "images"
        for name, grid in self.write(model, trainer.datamodule, split, folder).items():
            self.log_image(trainer, f"images/{name}", grid)

    @staticmethod
    def log_image(trainer: Trainer, key: str, grid: Tensor) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key, [grid], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, trainer.global_step)

    def on_validation_epoch_end(self, trainer: Trainer, model: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.save(trainer, model, "val")

    def on_test_end(self, trainer: Trainer, model: LightningModule) -> None:
        self.save(trainer, model, "test")
