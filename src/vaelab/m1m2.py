"""M1+M2 (Kingma, Rezende, Mohamed & Welling 2014, section 3.2.3): M2 trained on the codes of
M1, a plain VAE trained before on the same images and then frozen.

Each training step draws the codes z1 ~ q(z1|x) of M1 for the batch (the paper's "samples from
the posterior"); validation, testing and pictures use their means E[z1|x]. M2's classifier
q(y|z1), posterior q(z2|z1,y) and decoder p(z1|y,z2), here a diagonal Gaussian whose mean and
log-variance the decoder gives, see z1 as a 1 x 1 x d image. Pictures decode through both:
z2, y -> E[z1|y,z2] -> M1's E[x|z1].
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from vaelab.checkpoints import CheckpointError, check_checkpoint, resolve_checkpoint
from vaelab.errors import ConfigError
from vaelab.m2 import M2
from vaelab.posteriors.gaussian import reparameterize
from vaelab.vae import VAE


def load_m1(path: str, image_shape: Sequence[int]) -> VAE:
    """The frozen plain VAE of the run that saved `path` (a .ckpt file, or a run folder: its
    last.ckpt), built from that run's config.yaml."""
    if path == "last":
        raise ConfigError("model.features_ckpt=last is ambiguous: give M1's .ckpt or run folder")
    try:
        ckpt = Path(resolve_checkpoint(path, log_dir=""))
    except CheckpointError:
        raise ConfigError(
            f"model.features_ckpt={path} not found: M1+M2 rebuilds M1 from that run (its "
            "config.yaml and checkpoint); put it back or set model.features_ckpt to its new place"
        ) from None
    saved = ckpt.resolve().parent.parent / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"model.features_ckpt={path}: no {saved} beside it; give a checkpoint of a "
            "train.py run (its .ckpt file or its folder)"
        )
    model = instantiate(OmegaConf.load(saved).model, image_shape=image_shape, _convert_="all")
    if not (isinstance(model, VAE) and model.stochastic and model.closed_form_kl):
        raise ConfigError(
            f"model.features_ckpt={path} holds a {type(model).__name__}, not M1: give the "
            "checkpoint of a plain VAE (Gaussian q(z|x), N(0, I) prior, e.g. model=mlp_vae)"
        )
    model.load_state_dict(check_checkpoint(str(ckpt), model)["state_dict"])
    return model.requires_grad_(False)  # its nets have no train-time layers (dropout, BN)


class M1M2(M2):
    """M2 on the codes of a frozen M1 (`features_ckpt`), kept as the submodule `m1`."""

    def __init__(self, *args: Any, features_ckpt: str, image_shape: Sequence[int], **kwargs: Any):
        if not features_ckpt:
            raise ConfigError(
                "model=m1m2 needs M1: set model.features_ckpt=<a plain VAE's .ckpt or run folder>"
            )
        m1 = load_m1(features_ckpt, image_shape)
        super().__init__(*args, image_shape=(1, 1, m1.latent_dim), **kwargs)
        self.remember(features_ckpt=features_ckpt)
        self.m1 = m1

    def parameter_groups(self) -> list[dict[str, Any]]:
        """M2's parameters only: M1 stays as it was trained."""
        return [
            {"params": [p for name, p in self.named_parameters() if not name.startswith("m1.")]}
        ]

    def inputs(self, images: Tensor) -> Tensor:
        """M1's codes of the images as (batch, 1, 1, d): drawn from q(z1|x) in training, the
        means otherwise."""
        with torch.no_grad():
            q = self.m1.encode(images)
            z1 = (
                reparameterize(q.mean, q.log_var, torch.randn_like(q.mean))
                if self.training
                else q.mean
            )
        return z1[:, None, None, :]

    def decode_mean(self, z: Tensor) -> Tensor:
        """M1's E[x|z1] at z1 = E[z1|y,z2], for codes [z2, onehot(y)]."""
        return self.m1.decode_mean(super().decode_mean(z).flatten(1))
