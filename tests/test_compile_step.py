"""model.compile_step: the training step's draw compiled as one graph (CUDA graphs on a GPU with
mode reduce-overhead) trains as the eager step does, to float rounding."""

from collections.abc import Callable

import pytest
import torch
from helpers import make_cfg
from torch._dynamo.utils import counters

from vaelab.components import build
from vaelab.errors import ConfigError, user_error
from vaelab.likelihoods import Bernoulli
from vaelab.nets.mlp import MLPDecoder, MLPEncoder
from vaelab.train import prepare, train
from vaelab.vae import VAE

TINY = [
    *("data=sprites", "data.size=60", "data.batch_size=9", "data.eval_batch_size=9"),
    *("model=mlp_vae", "model.latent_dim=3", "model.kl_warmup_steps=4", "trainer.max_epochs=2"),
    *("test=false", "eval.plausibility_samples=0", "model.steps_per_call=2"),
]


def make(mode: str | None) -> VAE:
    torch.manual_seed(0)
    return VAE(MLPEncoder, MLPDecoder, Bernoulli(), (1, 28, 28), latent_dim=4, compile_step=mode)


def eager_and_compiled_steps(
    make_model: Callable[[str | None], VAE], x: torch.Tensor
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The loss and gradients of one training step on x, eager and with compile_step, from the
    same noise (drawn outside the compiled graph); checks that the compiled model ran a graph."""
    results, graphs = [], counters["stats"]["unique_graphs"]
    for mode in (None, "reduce-overhead"):
        model = make_model(mode)
        torch.manual_seed(1)
        loss = model.step_loss((x, None))
        loss.backward()
        results.append((loss, {name: p.grad for name, p in model.named_parameters()}))
    assert counters["stats"]["unique_graphs"] > graphs
    return results


@pytest.mark.slow
def test_a_compiled_step_gives_the_eager_loss_and_gradients():
    assert list(make("reduce-overhead").state_dict()) == list(make(None).state_dict())
    x = torch.rand(16, 1, 28, 28).bernoulli()
    (loss, grads), (compiled_loss, compiled_grads) = eager_and_compiled_steps(make, x)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vamp_vae"])
def test_family_members_compile_to_their_eager_step(tmp_path, model):
    """A VampPrior inside the compiled graph: its log p(z) encodes its pseudo-inputs."""

    def make_member(mode: str | None) -> VAE:
        torch.manual_seed(0)
        extra = [] if mode is None else [f"model.compile_step={mode}"]
        return build(make_cfg(tmp_path, [*TINY[:4], f"model={model}", *extra]))[1]

    datamodule = build(make_cfg(tmp_path, [*TINY[:4], f"model={model}"]))[0]
    datamodule.setup()
    x = datamodule.datasets["train"].images[:8].float() / 255
    (loss, grads), (compiled_loss, compiled_grads) = eager_and_compiled_steps(make_member, x)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_training_with_a_compiled_step_follows_the_eager_run(tmp_path):
    """Two epochs through train.py, two steps a call and a last partial batch (another shape)."""
    runs, graphs = {}, counters["stats"]["unique_graphs"]
    for name, extra in (("eager", []), ("compiled", ["model.compile_step=reduce-overhead"])):
        metrics = train(make_cfg(tmp_path / name, [*TINY, *extra]))
        assert (counters["stats"]["unique_graphs"] > graphs) == (name == "compiled")
        state = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        runs[name] = metrics, state["state_dict"]
    (eager, eager_state), (compiled, compiled_state) = runs["eager"], runs["compiled"]
    assert compiled["global_step"] == eager["global_step"] == 12  # 6 batches of 9 (the last 3)
    assert compiled["val/elbo"] == pytest.approx(eager["val/elbo"], rel=1e-4)
    for name, value in eager_state.items():
        torch.testing.assert_close(compiled_state[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.compile_step=fast"], "model.compile_step must be null or one of"),
        (["model.compile_step=default", "model.compile=true"], "set one of the two"),
        (["model=ae", "model.compile_step=default"], "which VAE does not use"),
        (["model=vq_vae", "+model.compile_step=default"], "which VQVAE does not use"),
        (
            ["model.compile_step=reduce-overhead", "+trainer.accumulate_grad_batches=2"],
            "cannot accumulate gradients",
        ),
    ],
)
def test_a_step_that_cannot_be_compiled_says_so(tmp_path, overrides, message):
    with pytest.raises(Exception) as raised:
        prepare(make_cfg(tmp_path, [*TINY[:4], *overrides]))
    error = user_error(raised.value)
    assert isinstance(error, ConfigError) and message in str(error)
