"""Pictures of the latent space: prior samples, reconstructions, interpolations, traversals, the
decoded manifold of a 2-d latent and a scatter of labelled codes.

At the end of every `every_n_epochs`-th validation epoch (and after testing) the callback decodes
fixed codes and fixed validation images, saves each grid as a PNG under `<run>/images/` and logs
it to W&B or TensorBoard. Rank zero only. Decoded images show E[x|z] (pixel probabilities for
a Bernoulli decoder), not noisy draws. `evaluate.py eval.images=true` writes the same pictures
of any checkpoint.
"""

from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.distributions import Normal
from torchvision.utils import make_grid, save_image

from vaelab.posteriors.gaussian import gaussian_kl
from vaelab.vae import VAE

CHUNK = 256  # images encoded at once for the scatter


def tile(images: Tensor, row_length: int) -> Tensor:
    """Images (N, C, H, W) in rows of row_length, 2 grey pixels apart: (3 or C, height, width)."""
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=row_length, pad_value=0.5)


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


def manifold_codes(grid: int) -> Tensor:
    """Codes (grid * grid, 2) at the N(0, 1) quantiles Phi^-1(u), u = (k + 0.5) / grid, row by row:
    z_0 grows left to right along a row, z_1 grows from the bottom row to the top one, as the
    axes of the scatter plot do."""
    quantiles = Normal(0.0, 1.0).icdf((torch.arange(grid) + 0.5) / grid)
    z_1, z_0 = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")
    return torch.stack([z_0, z_1], dim=-1).flatten(0, 1)


@torch.no_grad()
def manifold(model: VAE, grid: int) -> Tensor:
    """E[x|z] at `manifold_codes(grid)`, tiled grid x grid (Kingma & Welling 2014, Figure 4)."""
    return tile(model.decode_mean(manifold_codes(grid).to(model.device, model.dtype)), grid)


@torch.no_grad()
def scatter_axes(model: VAE, images: Tensor) -> tuple[Tensor, list[int], list[str], str]:
    """The images' codes (N, latent_dim), the two dimensions to plot, their axis labels and a
    title: both dimensions of a 2-d latent, else the two of highest KL averaged over the images
    (closed-form KL) or of largest code variance (other models). Dimensions count from 0."""
    closed_form = model.stochastic and model.closed_form_kl
    codes, kls = [], []
    for chunk in images.split(CHUNK):
        if closed_form:  # then the code is the posterior's mean
            q = model.encode(chunk)
            codes.append(q.mean)
            kls.append(gaussian_kl(q.mean, q.log_var))
        else:
            codes.append(model.code(chunk))
    codes = torch.cat(codes).float().cpu()
    if closed_form:
        scores, unit, basis = torch.cat(kls).float().cpu().mean(0), "KL {:.2f} nats", "highest KL"
    else:
        scores, unit, basis = codes.var(0, correction=0), "variance {:.2f}", "largest variance"
    dims = [0, 1] if model.latent_dim == 2 else scores.topk(2).indices.tolist()
    title = f"codes of {len(codes)} images by label"
    if model.latent_dim > 2:
        title += f"\nthe 2 of {model.latent_dim} dimensions of {basis}"
    return codes, dims, [f"z_{d} ({unit.format(scores[d])})" for d in dims], title


def scatter(model: VAE, images: Tensor, labels: Tensor) -> Tensor:
    """The images' codes in two dimensions (`scatter_axes`) coloured by label, drawn by
    matplotlib's Agg backend as an RGB image (3, H, W) in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    codes, dims, axis_labels, title = scatter_axes(model, images)
    figure = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots()
    few = labels.min() >= 0 and labels.max() < 10  # one tab10 colour per label
    colours = {"cmap": "tab10", "vmin": -0.5, "vmax": 9.5} if few else {"cmap": "viridis"}
    x, y = codes[:, dims].T.numpy()
    dots = axes.scatter(x, y, c=labels.numpy(), s=5, **colours)
    axes.legend(*dots.legend_elements(), title="label", fontsize="small")
    axes.set(xlabel=axis_labels[0], ylabel=axis_labels[1], title=title)
    canvas.draw()
    rgba = torch.from_numpy(np.asarray(canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 255


def labelled_images(
    datamodule: LightningDataModule, split: str, count: int
) -> tuple[Tensor, Tensor]:
    """Up to `count` uint8 images evenly spaced through a split, and their labels (the first
    label column where there are several: the shape for sprites)."""
    datamodule.setup()
    dataset = datamodule.datasets[split]
    positions = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).long().tolist()
    if hasattr(dataset, "__getitems__"):
        images, labels = dataset.__getitems__(positions)
    else:
        items = [dataset[i] for i in positions]
        images = torch.stack([image for image, _ in items])
        labels = torch.as_tensor([label for _, label in items])
    return images.cpu(), labels.reshape(len(positions), -1)[:, 0].cpu()


class LatentImages(Callback):
    def __init__(
        self,
        num_samples: int = 64,
        num_images: int = 32,
        steps: int = 10,
        every_n_epochs: int = 1,
        seed: int = 0,
        manifold_grid: int = 20,
        num_scatter: int = 2000,
    ) -> None:
        self.num_samples = num_samples
        self.num_images = num_images
        self.steps = steps
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.manifold_grid = manifold_grid
        self.num_scatter = num_scatter
        self.scatter_images: dict[str, tuple[Tensor, Tensor]] = {}  # split: images, labels

    def labelled(self, datamodule: LightningDataModule, split: str) -> tuple[Tensor, Tensor]:
        """The split's scatter images and labels, taken once."""
        if split not in self.scatter_images:
            self.scatter_images[split] = labelled_images(datamodule, split, self.num_scatter)
        return self.scatter_images[split]

    @torch.no_grad()
    def write(
        self, model: VAE, datamodule: LightningDataModule, split: str, folder: Path
    ) -> dict[str, Tensor]:
        """Save the pictures of the split as PNGs in folder; return them by name."""
        images = datamodule.example_images(split, self.num_images).to(model.device)
        generator = torch.Generator().manual_seed(self.seed)
        was_training = model.training
        model.eval()
        pictures = {
            "samples": tile(model.sample(self.num_samples, generator=generator), 8),
            "reconstructions": tile(reconstructions(model, images), 8),
            "interpolations": tile(interpolations(model, images[:16], self.steps), self.steps),
            "traversals": tile(traversals(model, images[0], self.steps), self.steps),
        }
        for name, (grid, row_length) in model.extra_pictures(images).items():
            pictures[name] = tile(grid, row_length)
        if model.stochastic and model.latent_dim == 2 and model.prior.standard:
            pictures["manifold"] = manifold(model, self.manifold_grid)
        if model.latent_dim > 1 and self.num_scatter > 0:
            scatter_images, labels = self.labelled(datamodule, split)
            pictures["scatter"] = scatter(model, scatter_images.to(model.device) / 255, labels)
        model.train(was_training)
        folder.mkdir(parents=True, exist_ok=True)
        grids = {}
        for name, grid in pictures.items():
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
