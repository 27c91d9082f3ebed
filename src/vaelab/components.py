"""The datamodule and the model of a composed config: what train.py and evaluate.py build."""

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule and the model, checked against each other."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, _convert_="all")
    model.likelihood.check_data(datamodule.binary)
    return datamodule, model
