"""M2 (Kingma, Rezende, Mohamed & Welling 2014): semi-supervised learning with a classifier
q(y|x), a posterior q(z|x,y), a decoder p(x|y,z), p(y) uniform over K classes and p(z) = N(0, I).

Per example, in nats, with one draw z ~ q(z|x,y):
    L(x, y) = E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z))     (labelled bound)
    U(x)    = sum_y q(y|x) L(x, y) + H(q(y|x))                               (unlabelled bound)
    loss    = mean_u -U(x) + (N_l / N) mean_l -L(x, y) + alpha mean_l -log q(y|x)
the paper's J^alpha = sum_l -L + sum_u -U + alpha' E_l[-log q(y|x)], alpha' = alpha N (the
paper: alpha = 0.1), divided by N, the training set's size, for batches of unlabelled images
drawn from all N and labelled ones from the N_l labels (vaelab.data.labels); E_l is a mean over
the labelled examples (Kingma's code: beta = alpha n_tot / n_labeled per labelled example). A
batch holds both kinds, the labelled images first (label -1 marks the unlabelled).

Its code for pictures is [z, onehot(y)] (the decoder's input) with y = argmax q(y|x), so
reconstructions, interpolations and traversals go through the same `code`/`decode`; `sample`
draws y uniform and z from the prior; `analogies` decodes one z with every class.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from vaelab.conditional import ClassConditional
from vaelab.data.labels import labelled_count
from vaelab.errors import ConfigError
from vaelab.vae import STAGES

M2_TERMS = ("elbo", "elbo_labelled", "classification", "error")


class M2(ClassConditional):
    has_nll = False  # log p(x) = log sum_y p(x, y): not estimated; the error rate is its measure
    semi_supervised = True

    def __init__(
        self,
        *args: Any,
        classifier: Any,
        alpha: float = 0.1,
        num_labels: int | None = None,
        dataset_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.remember(alpha=alpha)
        # None: read from the Trainer's training data, as is the labelled images a batch starts with
        self.sizes = {"labels": num_labels, "all": dataset_size, "per_batch": None}
        self.classifier = classifier(self.image_shape, self.num_classes)
        self.metrics = nn.ModuleDict(
            {f"{stage}_{term}": MeanMetric() for stage in STAGES for term in M2_TERMS}
        )

    def unlabelled_bound(self, x: Tensor, logits: Tensor) -> Tensor:
        """U(x) per example: every class's L(x, y) weighted by q(y|x), plus H(q(y|x))."""
        log_q = F.log_softmax(logits, dim=1)
        return (log_q.exp() * (self.class_bounds(x) - log_q)).sum(1)

    def inputs(self, images: Tensor) -> Tensor:
        """What the classifier, q(z|x,y) and p(x|y,z) model: the images themselves (M1+M2:
        their codes)."""
        return images

    def terms(self, images: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per-example L(x, y), U(x), -log q(y|x) and the 0/1 error, for labelled images."""
        x = self.inputs(images)
        logits = self.classifier(x)
        return {
            "elbo": self.unlabelled_bound(x, logits),
            "elbo_labelled": self.bound(x, y)["elbo"],
            "classification": F.cross_entropy(logits, y, reduction="none"),
            "error": (logits.argmax(1) != y).to(x.dtype),
        }

    def training_sizes(self) -> tuple[int, int]:
        """(N_l, N): the labels kept and the training set's size."""
        if self.sizes["labels"] is None or self.sizes["all"] is None:
            try:
                dataset = self.trainer.datamodule.datasets["train"]
                return dataset.num_labels, len(dataset)
            except (RuntimeError, AttributeError, KeyError):
                raise ConfigError(
                    "model=m2 needs labelled data: set data.num_labels=N (e.g. 100)"
                ) from None
        return self.sizes["labels"], self.sizes["all"]

    def on_fit_start(self) -> None:
        """Read N_l and N once (no labels: a one-line error before the first step)."""
        self.sizes["labels"], self.sizes["all"] = self.training_sizes()
        self.sizes["per_batch"] = self.trainer.datamodule.datasets["train"].per_batch

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = self.inputs(batch[0]), batch[1]
        count = labelled_count(len(y), self.sizes["per_batch"])  # sliced: a mask syncs the GPU
        num_labels, size = self.training_sizes()
        logits = self.classifier(x[count:])
        unlabelled = self.unlabelled_bound(x[count:], logits).mean()
        labelled_bound = self.bound(x[:count], y[:count])["elbo"].mean()
        classification = F.cross_entropy(self.classifier(x[:count]), y[:count])
        loss = -unlabelled - num_labels / size * labelled_bound + self.alpha * classification
        if self.logs_this_step():
            logged = {
                "train/loss": loss,
                "train/elbo": unlabelled,
                "train/elbo_labelled": labelled_bound,
                "train/classification": classification,
            }
            self.log_dict(logged, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def _evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        for name, value in self.terms(*batch).items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "error")

    def predict(self, images: Tensor) -> Tensor:
        """The most likely class, argmax q(y|x), of each image."""
        return self.classifier(self.inputs(images)).argmax(1)

    def code(self, images: Tensor) -> Tensor:
        """[E q(z|x,y), onehot(y)] at the most likely class y = argmax q(y|x)."""
        x = self.inputs(images)  # once: M1+M2's codes cost an M1 encoding
        onehot = self.class_codes(self.classifier(x).argmax(1))
        return torch.cat([self.posterior_given(x, onehot).mean, onehot], dim=1)
