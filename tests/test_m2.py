"""M2 and its labelled subsets: the bounds by hand, the balanced seeded labels, the mixed batches,
the error across ranks, the analogy picture's layout and a run on MNIST's file format."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, make_cfg, mnist_overrides, write_idx
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaelab.components import build
from vaelab.data.labels import UNLABELLED, PartlyLabelled, balanced_subset, labelled_count
from vaelab.errors import ConfigError, user_error
from vaelab.evaluate import main as evaluate_main
from vaelab.train import train


def write_balanced_mnist(root, train: int = 60, test: int = 20) -> None:
    """MNIST's raw IDX files, random images, every class equally often."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(
            root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 256, (count, 28, 28)),
        )
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)


def m2_overrides(tmp_path, *extra: str) -> list[str]:
    write_balanced_mnist(tmp_path / "mnist")
    return [
        *mnist_overrides(tmp_path / "mnist"),
        "data.batch_size=8",
        "data.eval_batch_size=10",
        "data.labelled_per_batch=4",
        "model=m2",
        "model.latent_dim=4",
        "model.encoder.hidden_dims=[16]",
        "model.decoder.hidden_dims=[16]",
        "model.classifier.hidden_dims=[16]",
        *extra,
    ]


def test_balanced_subset_is_balanced_seeded_and_checked():
    labels = torch.arange(100) % 10
    chosen = balanced_subset(labels, 30, seed=0)
    assert torch.equal(labels[chosen].bincount(), torch.full((10,), 3))
    assert torch.equal(chosen, balanced_subset(labels, 30, seed=0))
    assert not torch.equal(chosen, balanced_subset(labels, 30, seed=1))
    with pytest.raises(ConfigError, match="multiple of the 10 classes"):
        balanced_subset(labels, 25, seed=0)


def test_batches_put_labelled_images_before_the_unlabelled():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    data = PartlyLabelled(images, torch.arange(20) % 10, torch.tensor([3, 7, 11]), per_batch=2)
    x, y = data.__getitems__([5, 9, 2, 0])
    # labelled picks: labelled[5 % 3] = 11, labelled[9 % 3] = 3; then the 4 positions, unlabelled
    assert x[:, 0, 0, 0].tolist() == [11, 3, 5, 9, 2, 0]
    assert y.tolist() == [1, 3, *[UNLABELLED] * 4]
    for positions in ([5, 9, 2, 0], [4], [1, 8]):  # a full batch, then last ones of 1 and 2
        _, y = data.__getitems__(positions)
        assert labelled_count(len(y), per_batch=2) == int((y != UNLABELLED).sum())
        assert (y[: labelled_count(len(y), 2)] != UNLABELLED).all()


def test_labels_come_from_the_training_split_only(tmp_path):
    datamodule, _ = build(make_cfg(tmp_path, m2_overrides(tmp_path, "data.num_labels=20")))
    datamodule.setup()
    train_set, val = datamodule.datasets["train"], datamodule.datasets["val"]
    assert train_set.num_labels == 20 and len(train_set) == 50
    assert torch.equal(train_set.labels[train_set.labelled].bincount(), torch.full((10,), 2))
    labelled = {bytes(image.numpy()) for image in train_set.images[train_set.labelled]}
    assert labelled.isdisjoint({bytes(image.numpy()) for image in val.images})


def by_hand_bound(model, x: torch.Tensor, y: int, eps: torch.Tensor) -> torch.Tensor:
    """L(x, y) from torch.distributions, given the draw's noise."""
    onehot = torch.nn.functional.one_hot(torch.full((len(x),), y), 10).float()
    mean, log_var = model.encoder(torch.cat([x.flatten(1), onehot], 1)).chunk(2, dim=1)
    q = Normal(mean, (0.5 * log_var).exp())
    z = mean + (0.5 * log_var).exp() * eps
    logits = model.decoder(torch.cat([z, onehot], 1))
    reconstruction = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    kl = kl_divergence(q, Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(1)
    return reconstruction - math.log(10) - kl


def test_unlabelled_bound_is_the_sum_over_classes(tmp_path):
    _, model = build(make_cfg(tmp_path, m2_overrides(tmp_path)))
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    logits = model.classifier(x)
    torch.manual_seed(7)
    bound = model.unlabelled_bound(x, logits)
    torch.manual_seed(7)
    eps = torch.randn(10 * 3, 4).view(10, 3, 4)  # the classes' draws, in the order U makes them
    q = torch.softmax(logits, 1)
    expected = sum(
        q[:, y] * (by_hand_bound(model, x, y, eps[y]) - q[:, y].log()) for y in range(10)
    )
    torch.testing.assert_close(bound, expected, rtol=1e-5, atol=1e-4)


def test_training_loss_is_the_papers_objective_over_n(tmp_path):
    """J^alpha / N = (1/N) [sum_l -L + sum_u -U + 0.1 N mean_l CE] for N_l labels of N images."""
    _, model = build(make_cfg(tmp_path, m2_overrides(tmp_path, "model.alpha=0.1")))
    model.sizes = {"labels": 20, "all": 50, "per_batch": 2}
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3), generator=generator)
    y = torch.tensor([3, 8, UNLABELLED, UNLABELLED, UNLABELLED])
    torch.manual_seed(11)
    loss = model.training_step((x, y), 0)
    torch.manual_seed(11)
    eps_u = torch.randn(10 * 3, 4).view(10, 3, 4)  # U's draws first, then L's
    eps_l = torch.randn(2, 4)
    q = torch.softmax(model.classifier(x[2:]), 1)
    u = sum(q[:, c] * (by_hand_bound(model, x[2:], c, eps_u[c]) - q[:, c].log()) for c in range(10))
    labelled = torch.stack(
        [by_hand_bound(model, x[i : i + 1], int(y[i]), eps_l[i : i + 1])[0] for i in range(2)]
    )
    cross_entropy = -torch.log_softmax(model.classifier(x[:2]), 1)[torch.arange(2), y[:2]]
    expected = (20 * -labelled.mean() + 50 * -u.mean() + 0.1 * 50 * cross_entropy.mean()) / 50
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_error_counts_every_example_once_across_ranks(tmp_path):
    """Two ranks' shards of unequal size, each through the model's validation metric, merged as
    the all-reduce merges them: the error of the whole set, not the mean of two means."""
    _, model = build(make_cfg(tmp_path, m2_overrides(tmp_path)))
    x = torch.rand(9, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.arange(9) % 10
    whole = model.terms(x, y)["error"].mean()
    ranks = [copy.deepcopy(model.metrics["val_error"]) for _ in range(2)]
    for metric, part in zip(ranks, (slice(0, 3), slice(3, 9)), strict=True):
        metric.update(model.terms(x[part], y[part])["error"])
    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute() == pytest.approx(whole.item())
    assert 0 < whole < 1  # neither all right nor all wrong: the weighting matters


def test_analogies_decode_each_images_z_with_every_class(tmp_path):
    _, model = build(make_cfg(tmp_path, m2_overrides(tmp_path)))
    x = torch.rand(2, 1, 28, 28)
    grid = model.analogies(x)
    assert grid.shape == (2 * 11, 1, 28, 28)
    torch.testing.assert_close(grid[0], x[0])
    torch.testing.assert_close(grid[11], x[1])
    with torch.no_grad():
        y = model.classifier(x[1:]).argmax(1)
        onehot = torch.nn.functional.one_hot(y, 10).float()
        z = model.encoder(torch.cat([x[1:].flatten(1), onehot], 1)).chunk(2, dim=1)[0]
        seventh = torch.sigmoid(model.decoder(torch.cat([z, torch.eye(10)[7:8]], 1)))
    torch.testing.assert_close(grid[11 + 1 + 7], seventh[0])


def test_trains_on_partly_labelled_mnist(tmp_path):
    overrides = m2_overrides(
        tmp_path, "data.num_labels=20", "debug=limit", "eval.num_importance_samples=10"
    )
    metrics = train(make_cfg(tmp_path, overrides))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("val/error", "test/error", "val/elbo", "val/elbo_labelled", "val/classification"):
        assert name in saved and math.isfinite(saved[name]), name
    assert 0 <= saved["test/error"] <= 1 and metrics["test/error"] == pytest.approx(
        saved["test/error"]
    )
    assert "test/nll" not in saved  # M2 has no NLL estimate: its measure is the error rate
    with Image.open(tmp_path / "images" / "analogies.png") as picture:
        assert picture.size == (2 + 11 * 30, 2 + 10 * 30)  # 10 rows: an image, then 10 classes


def test_needs_labels_in_one_line(tmp_path):
    with pytest.raises(Exception) as raised:
        train(make_cfg(tmp_path, m2_overrides(tmp_path, "debug=limit")))
    error = user_error(raised.value)
    assert isinstance(error, ConfigError) and "data.num_labels" in str(error)


def test_labels_for_a_model_that_cannot_use_them_are_refused(tmp_path):
    write_balanced_mnist(tmp_path / "mnist")
    overrides = [*mnist_overrides(tmp_path / "mnist"), "data.num_labels=20", "debug=limit"]
    with pytest.raises(ConfigError, match="model=m2"):
        train(make_cfg(tmp_path, overrides))


def train_m1(tmp_path) -> str:
    """A tiny plain VAE (M1) trained on the balanced MNIST files; its run folder."""
    run = tmp_path / "m1"
    write_balanced_mnist(tmp_path / "mnist")
    overrides = [
        *mnist_overrides(tmp_path / "mnist"),
        "data.batch_size=8",
        "model.latent_dim=3",
        "model.encoder.hidden_dims=[16]",
        "model.decoder.hidden_dims=[16]",
        "debug=limit",
        "test=false",
    ]
    train(make_cfg(run, overrides))
    return str(run)


def m1m2_overrides(tmp_path, m1: str, *extra: str) -> list[str]:
    return m2_overrides(tmp_path, "model=m1m2", f"model.features_ckpt={m1}", *extra)


def test_m1m2_models_m1s_codes_and_leaves_m1_as_trained(tmp_path):
    m1_run = train_m1(tmp_path)
    _, model = build(make_cfg(tmp_path, m1m2_overrides(tmp_path, m1_run)))
    saved = torch.load(f"{m1_run}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in saved.items():  # M1 is the saved run's model, frozen
        torch.testing.assert_close(model.m1.state_dict()[name], tensor)
    assert not any(p.requires_grad for p in model.m1.parameters())
    grouped = {id(p) for group in model.parameter_groups() for p in group["params"]}
    assert grouped.isdisjoint(id(p) for p in model.m1.parameters())
    assert grouped == {id(p) for n, p in model.named_parameters() if not n.startswith("m1.")}
    x = torch.rand(5, 1, 28, 28)
    means = model.m1.encode(x).mean
    model.eval()
    torch.testing.assert_close(model.inputs(x), means[:, None, None, :])  # E[z1|x]
    model.train()
    draws = torch.stack([model.inputs(x) for _ in range(2000)])[:, :, 0, 0]
    std = (0.5 * model.m1.encode(x).log_var).exp()
    torch.testing.assert_close(draws.mean(0), means, atol=float(4 * std.max() / 40), rtol=0)
    torch.testing.assert_close(draws.std(0), std, atol=0.1 * float(std.max()), rtol=0.1)
    # M2's p(z1|y,z2) is a Gaussian on the 1 x 1 x 3 code; pictures decode through M1
    codes = torch.cat([torch.zeros(1, 4), torch.eye(10)[2:3]], 1)
    with torch.no_grad():
        z1 = model.decoder(codes)[:, 0, 0, :]
        torch.testing.assert_close(model.decode_mean(codes), model.m1.decode_mean(z1))
    assert model.analogies(x[:2]).shape == (22, 1, 28, 28)


def test_m1m2_trains_evaluates_and_needs_a_plain_vae(tmp_path, capsys):
    m1_run = train_m1(tmp_path)
    _, model = build(make_cfg(tmp_path, m1m2_overrides(tmp_path, m1_run)))
    before = {name: tensor.clone() for name, tensor in model.m1.state_dict().items()}
    overrides = m1m2_overrides(tmp_path, m1_run, "data.num_labels=20", "debug=limit")
    metrics = train(make_cfg(tmp_path, overrides))
    assert 0 <= metrics["test/error"] <= 1
    trained = torch.load(next((tmp_path / "checkpoints").glob("last.ckpt")), weights_only=True)
    for name, tensor in before.items():
        torch.testing.assert_close(trained["state_dict"][f"m1.{name}"], tensor)
    for folder, extra, message in (
        (tmp_path / "none", [], "set model.features_ckpt"),
        (tmp_path / "again", [f"model.features_ckpt={tmp_path}"], "not M1"),  # an M1+M2 run
        (tmp_path / "last", ["model.features_ckpt=last"], "is ambiguous"),
    ):
        with pytest.raises(Exception) as raised:
            build(make_cfg(folder, m2_overrides(tmp_path, "model=m1m2", *extra)))
        error = user_error(raised.value)
        assert isinstance(error, ConfigError) and message in str(error), error
    moved = tmp_path / "moved_m1"
    Path(m1_run).rename(moved)  # evaluate.py rebuilds M1 from model.features_ckpt
    for overrides, message in (
        ([], "model.features_ckpt"),
        ([f"++run_overrides.model.features_ckpt={moved}"], None),  # evaluate.py model.<key>=
    ):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            eval_cfg = compose(
                "evaluate",
                [f"paths.output_dir={tmp_path / 'eval'}", f"ckpt_path={tmp_path}", *overrides],
            )
        if message is None:
            results = evaluate_main(eval_cfg)  # M1 rebuilt from its new place
            wrong = results["error"] * 20  # misclassified of the 20 test images
            assert 0 <= wrong <= 20 and wrong == pytest.approx(round(wrong))
            continue
        with pytest.raises(SystemExit):
            evaluate_main(eval_cfg)
        assert message in capsys.readouterr().err
