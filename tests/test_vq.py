import functools
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_SPRITES, make_cfg
from hydra import compose, initialize_config_dir

from vaelab.components import build
from vaelab.errors import ConfigError
from vaelab.evaluate import evaluate_split, load_model
from vaelab.likelihoods import Bernoulli
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.train import train
from vaelab.vq import VQVAE, CodebookPerplexity, perplexity


def make_vq(**kwargs) -> VQVAE:
    return VQVAE(
        functools.partial(MLPEncoder, hidden_dims=[16]),
        functools.partial(MLPDecoder, hidden_dims=[16]),
        Bernoulli(),
        image_shape=(1, 4, 4),
        **kwargs,
    )


def set_codebook(model: VQVAE, rows: list[list[float]]) -> None:
    with torch.no_grad():
        model.codebook.copy_(torch.tensor(rows))
        if model.codebook_update == "ema":
            model.cluster_sum.copy_(model.codebook)


def test_quantise_picks_the_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    model = make_vq(num_positions=3, latent_dim=6, codebook_size=5).double()
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    indices, e = model.quantise(z)
    codebook = model.codebook.detach()
    for b in range(4):
        for p in range(3):
            vector = z[b, 2 * p : 2 * p + 2].detach()
            distances = [float(((vector - codebook[k]) ** 2).sum()) for k in range(5)]
            nearest = min(range(5), key=distances.__getitem__)
            assert indices[b, p] == nearest
            torch.testing.assert_close(e[b, p], codebook[nearest])
    _, _, _, z_q = model.straight_through(z)
    torch.testing.assert_close(z_q, e.detach().flatten(-2))  # forward: the codes themselves
    weights = torch.randn(4, 6, dtype=torch.float64)
    ((weights * z_q).sum() + z_q.square().sum()).backward()
    torch.testing.assert_close(z.grad, weights + 2 * z_q.detach())  # d/dz_q, evaluated at z_q
    torch.testing.assert_close(
        model.decode(z.detach()), model.decoder(e.detach().flatten(-2))
    )  # decode quantises first


def test_codebook_loss_moves_codes_to_encoder_outputs_commitment_reaches_only_encoder():
    torch.manual_seed(1)
    model = make_vq(num_positions=2, latent_dim=6, codebook_size=4)
    set_codebook(model, [[0.0, 0.0, 0.0], [0.5, -0.5, 0.2], [-0.3, 0.1, 0.4], [0.2, 0.2, -0.6]])
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    draws = model.draw(x)
    z_e, indices = draws["z_e"], draws["indices"]
    draws["codebook_loss"].sum().backward(retain_graph=True)
    expected = torch.zeros(4, 3)
    for b in range(5):
        for p in range(2):
            k = indices[b, p]
            expected[k] += 2 * (model.codebook[k].detach() - z_e[b, p].detach())
    torch.testing.assert_close(model.codebook.grad, expected)
    assert all(parameter.grad is None for parameter in model.encoder.parameters())

    model.zero_grad(set_to_none=True)
    z_e.retain_grad()
    draws["commitment_loss"].sum().backward()
    e = model.codebook.detach()[indices]
    torch.testing.assert_close(z_e.grad, 2 * (z_e.detach() - e))
    assert model.codebook.grad is None
    assert all(parameter.grad is None for parameter in model.decoder.parameters())
    assert any(parameter.grad.abs().sum() > 0 for parameter in model.encoder.parameters())


def test_ema_update_gives_the_textbook_cluster_sizes_sums_and_codes():
    model = make_vq(
        num_positions=2,
        latent_dim=4,
        codebook_size=3,
        codebook_update="ema",
        ema_decay=0.9,
        ema_epsilon=0.1,
        restart_threshold=0.0,
    ).double()
    set_codebook(model, [[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    assert "codebook" not in dict(model.named_parameters())
    z_e = torch.tensor([[[0.2, 0.0], [1.0, 3.0]], [[0.4, -0.2], [0.0, 1.0]]], dtype=torch.float64)
    model.update_codebook(z_e, torch.tensor([[0, 1], [0, 1]]))
    # n_k = (2, 2, 0); N_k = 0.9 * 1 + 0.1 n_k; m_k = 0.9 e_k + 0.1 * (sum of its z_e)
    sizes = [0.9 + 0.1 * 2, 0.9 + 0.1 * 2, 0.9]
    sums = [
        [0.9 * 0.0 + 0.1 * (0.2 + 0.4), 0.9 * 0.0 + 0.1 * (0.0 - 0.2)],
        [0.9 * 1.0 + 0.1 * (1.0 + 0.0), 0.9 * 1.0 + 0.1 * (3.0 + 1.0)],
        [0.9 * -1.0, 0.9 * 2.0],
    ]
    total = sum(sizes)  # N_k' = (N_k + eps) / (n + K eps) n
    smoothed = [(size + 0.1) / (total + 3 * 0.1) * total for size in sizes]
    codes = [[value / smoothed[k] for value in sums[k]] for k in range(3)]
    torch.testing.assert_close(model.cluster_size, torch.tensor(sizes, dtype=torch.float64))
    torch.testing.assert_close(model.cluster_sum, torch.tensor(sums, dtype=torch.float64))
    torch.testing.assert_close(model.codebook, torch.tensor(codes, dtype=torch.float64))
    # the buffers are the state: a model restored from it continues exactly
    restored = make_vq(
        num_positions=2, latent_dim=4, codebook_size=3, codebook_update="ema", ema_decay=0.9
    ).double()
    restored.load_state_dict(model.state_dict())
    for name in ("codebook", "cluster_size", "cluster_sum"):
        torch.testing.assert_close(getattr(restored, name), getattr(model, name))


@pytest.mark.parametrize("codebook_update", ["gradient", "ema"])
def test_codes_used_too_little_restart_at_encoder_outputs(codebook_update):
    model = make_vq(num_positions=1, latent_dim=2, codebook_size=4, codebook_update=codebook_update)
    set_codebook(model, [[0.0, 0.0], [5.0, 5.0], [6.0, 6.0], [7.0, 7.0]])
    z_e = torch.tensor([[[0.1, 0.2]], [[0.3, -0.1]], [[-0.2, 0.0]]])
    model.update_codebook(z_e, torch.zeros(3, 1, dtype=torch.long))
    # N = (0.99 + 0.01 * 3, 0.99, 0.99, 0.99): codes 1-3 fell below 1 use a step
    torch.testing.assert_close(model.cluster_size, torch.tensor([1.02, 0.99, 0.99, 0.99]))
    batch = z_e.flatten(0, 1)
    for k in (1, 2, 3):
        assert (model.codebook[k] == batch).all(-1).any()
    if codebook_update == "gradient":
        assert (model.codebook[0] == 0).all()
    else:
        torch.testing.assert_close(
            model.codebook, model.cluster_sum / model.smoothed_cluster_size()[:, None]
        )


def test_perplexity_counts_the_codes_in_use():
    assert float(perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0]))) == pytest.approx(4.0)
    assert float(perplexity(torch.tensor([0.0, 7.0, 0.0, 0.0]))) == pytest.approx(1.0)
    # p = (1/4, 1/4, 1/2): H = 1.5 ln 2, so exp(H) = 2^1.5
    assert float(perplexity(torch.tensor([1.0, 1.0, 2.0]))) == pytest.approx(2**1.5)
    metric = CodebookPerplexity(4)
    metric.update({"indices": torch.zeros(3, 2, dtype=torch.long)})  # one code a batch ...
    metric.update({"indices": torch.ones(3, 2, dtype=torch.long)})
    assert float(metric.compute()) == pytest.approx(2.0)  # ... two over the epoch


def test_logged_elbo_is_reconstruction_minus_p_log_k():
    torch.manual_seed(2)
    model = make_vq(num_positions=3, latent_dim=6, codebook_size=5, restart_threshold=0.0)
    with torch.no_grad():
        model.codebook.normal_()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    logged = {}
    model.log_dict = lambda values, **kwargs: logged.update(
        {name: float(value.detach()) for name, value in values.items()}
    )
    model.log = lambda *args, **kwargs: None
    loss = model.training_step((x, None), 0)
    with torch.no_grad():  # by hand: nearest codes by cdist, Bernoulli from torch.distributions
        z = model.encoder(x).view(6, 3, 2)
        indices = torch.cdist(z, model.codebook.expand(6, 5, 2)).argmin(-1)
        e = model.codebook[indices]
        logits = model.decoder(e.flatten(1))
        reconstruction = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
        squared = (z - e).square().sum((1, 2))
        counts = torch.bincount(indices.flatten(), minlength=5).double()
    p_log_k = 3 * math.log(5)
    torch.testing.assert_close(loss.detach(), (-reconstruction + (1 + 0.25) * squared).mean())
    assert logged["train/kl"] == pytest.approx(p_log_k)
    assert logged["train/reconstruction"] == pytest.approx(float(reconstruction.mean()))
    assert logged["train/elbo"] == pytest.approx(float(reconstruction.mean()) - p_log_k)
    assert logged["train/bits_per_dim"] == pytest.approx(
        -(float(reconstruction.mean()) - p_log_k) / (16 * math.log(2))
    )
    probabilities = counts / counts.sum()
    entropy = -sum(float(p * p.log()) for p in probabilities if p > 0)
    assert logged["train/perplexity"] == pytest.approx(math.exp(entropy), rel=1e-5)
    model._evaluation_step((x, None), "val")
    val = {name: float(model.metrics[f"val_{name}"].compute()) for name in ("elbo", "kl")}
    assert val["kl"] == pytest.approx(p_log_k)
    assert val["elbo"] == pytest.approx(float(reconstruction.mean()) - p_log_k, rel=1e-5)


def test_training_run_writes_metrics_images_and_evaluates_without_nll(tmp_path):
    overrides = ["model=vq_vae", "model.num_positions=4", "model.latent_dim=8"]
    overrides += ["model.codebook_size=16", "model.codebook_update=ema"]
    train(make_cfg(tmp_path, [*TINY_SPRITES, *overrides, "debug=limit"]))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    p_log_k = 4 * math.log(16)
    assert saved["test/kl"] == pytest.approx(p_log_k)
    assert saved["test/elbo"] == pytest.approx(saved["test/reconstruction"] - p_log_k, rel=1e-5)
    assert 1 <= saved["test/perplexity"] <= 16 and 1 <= saved["train/perplexity"] <= 16
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    for prefix in ("", "test_"):
        for name in ("samples", "reconstructions", "interpolations", "traversals"):
            assert (tmp_path / "images" / f"{prefix}{name}.png").stat().st_size > 100

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                f"paths.output_dir={tmp_path / 'eval'}",
                f"ckpt_path={Path(saved['best_checkpoint'])}",
            ],
        )
    datamodule, model = load_model(cfg)
    results = evaluate_split(model, datamodule, "test", cfg.eval)
    assert "nll" not in results and "num_importance_samples" not in results
    assert results["kl"] == pytest.approx(p_log_k)
    assert results["elbo"] == pytest.approx(results["reconstruction"] - p_log_k)
    # the test set is one batch of 6: evaluate sees what trainer.test saw
    assert results["reconstruction"] == pytest.approx(saved["test/reconstruction"], rel=1e-5)
    assert results["perplexity"] == pytest.approx(saved["test/perplexity"], rel=1e-5)


def test_resumed_run_restores_the_codebook_state(tmp_path):
    """The EMA codebook, cluster sizes and sums are buffers in the checkpoint: resuming loads
    them (a model that did not would start from N_k = 1 and the initial codebook)."""
    overrides = [*TINY_SPRITES, "model=vq_vae", "model.num_positions=4", "model.latent_dim=8"]
    overrides += ["model.codebook_size=16", "model.codebook_update=ema", "debug=limit"]
    overrides += ["~callbacks.latent_images"]
    train(make_cfg(tmp_path / "first", overrides))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = make_cfg(
        tmp_path / "resumed", [*overrides, "trainer.max_epochs=3", f"ckpt_path={last}"]
    )
    assert train(resumed)["global_step"] == 15
    saved = torch.load(last, weights_only=True)["state_dict"]
    model = build(resumed)[1]
    fresh = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.load_state_dict(saved)
    for name in ("codebook", "cluster_size", "cluster_sum"):
        assert torch.equal(getattr(model, name), saved[name])
        assert not torch.equal(saved[name], fresh[name]), name  # trained, not the initial state


def test_runs_saved_with_code_dim_still_build():
    """Before 2026-11-29 a VQ config said code_dim = D; latent_dim is now P * D."""
    model = make_vq(num_positions=3, code_dim=2, codebook_size=5)
    assert (model.latent_dim, model.code_dim, tuple(model.codebook.shape)) == (6, 2, (5, 2))
    with pytest.raises(ConfigError, match="a multiple of num_positions"):
        make_vq(num_positions=3, latent_dim=7)
