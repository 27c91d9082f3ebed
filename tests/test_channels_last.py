"""The conv nets' CPU kernels (channels-last, the native output layer) compute what PyTorch's
defaults do."""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from vaelab.checkpoints import match_state_layouts
from vaelab.nets.conv import ConvDecoder, ConvEncoder, NativeConvTranspose2d
from vaelab.nets.locatello import LocatelloDecoder, LocatelloEncoder

NETS = [(ConvEncoder, ConvDecoder, (1, 64, 64)), (ConvEncoder, ConvDecoder, (3, 32, 32))]
NETS += [(LocatelloEncoder, LocatelloDecoder, (1, 64, 64))]


def pair(net: type[nn.Module], *args) -> tuple[nn.Module, nn.Module]:
    """The net channels-last and in the default format, with the same weights."""
    torch.manual_seed(0)
    fast = net(*args)
    plain = net(*args, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


@pytest.mark.parametrize("encoder, decoder, shape", NETS)
def test_same_outputs_and_gradients_as_the_default_format(encoder, decoder, shape):
    nets = [pair(encoder, shape, 8), pair(decoder, 4, shape)]
    convs = [m for m in nets[0][0].modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert all(m.weight.is_contiguous() for m in nets[0][1].modules() if isinstance(m, nn.Conv2d))
    x = torch.bernoulli(torch.full((5, *shape), 0.3))
    z = torch.randn(2, 5, 4)  # (samples, batch, latent): the decoder keeps leading dimensions
    for (fast, plain), inputs in zip(nets, (x, z), strict=True):
        outputs = [net(inputs) for net in (fast, plain)]
        assert outputs[0].shape == outputs[1].shape
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
        for output in outputs:
            output.square().sum().backward()
        for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def adam_step(conv: nn.Conv2d, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    conv(x).square().sum().backward()
    optimizer.step()


def test_adam_moments_saved_in_the_other_layout_follow_their_weights():
    """A conv run saved before channels-last (or with channels_last=false) resumes with the
    moments of each weight, not of the weight that lies at its place in memory."""
    torch.manual_seed(0)
    plain, x = nn.Conv2d(8, 16, 3), torch.randn(4, 8, 9, 9)
    reference = torch.optim.Adam(plain.parameters(), lr=0.1, fused=True)
    adam_step(plain, reference, x)  # moments in PyTorch's default layout, as saved then
    resumed = []
    for fix in (False, True):
        fast = nn.Conv2d(8, 16, 3)
        fast.load_state_dict(plain.state_dict())
        fast.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(fast.parameters(), lr=0.1, fused=True)
        optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # as read from a file
        if fix:
            match_state_layouts(optimizer)
            moments = optimizer.state[fast.weight]["exp_avg"]
            assert moments.stride() == fast.weight.stride()
            torch.testing.assert_close(moments, reference.state[plain.weight]["exp_avg"])
        adam_step(fast, optimizer, x)
        resumed.append(fast.weight.detach().clone())
    adam_step(plain, reference, x)
    torch.testing.assert_close(resumed[1], plain.weight.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(resumed[0], plain.weight.detach(), atol=1e-3)  # without it


class OpsSeen(TorchDispatchMode):
    """Records the ATen ops that run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("channels_last", [True, False])
def test_native_output_layer_computes_torchs_transposed_conv(channels_last):
    """Its forward is PyTorch's own kernel, its values and gradients nn.ConvTranspose2d's."""
    torch.manual_seed(0)
    native, plain = NativeConvTranspose2d(32, 1, 4, 2, 1), nn.ConvTranspose2d(32, 1, 4, 2, 1)
    plain.load_state_dict(native.state_dict())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(6, 32, 16, 16).contiguous(memory_format=layout)
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    grad = torch.randn(6, 1, 32, 32)
    with OpsSeen() as seen:
        out = native(inputs[0])
    assert "slow_conv_transpose2d" in seen.ops and "convolution" not in seen.ops
    expected = plain(inputs[1])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for output in (out, expected):
        output.backward(grad)
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, rtol=1e-5, atol=1e-6)
    for a, b in zip(native.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_native_output_layer_leaves_other_cases_to_torch():
    """Under CPU autocast (bf16 inputs) and for an unbatched image it computes what torch's
    layer does, dtype and shape included."""
    torch.manual_seed(0)
    native, plain = NativeConvTranspose2d(8, 1, 4, 2, 1), nn.ConvTranspose2d(8, 1, 4, 2, 1)
    plain.load_state_dict(native.state_dict())
    x = torch.randn(3, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [layer(x) for layer in (native, plain)]
    assert outputs[0].dtype == outputs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(native(x[0]), plain(x[0]))


@pytest.mark.parametrize(
    "decoder, last", [(ConvDecoder, "deconv.6.weight"), (LocatelloDecoder, "net.11.weight")]
)
def test_decoders_take_the_native_layer_for_one_channel_only(decoder, last):
    """One output channel: the native layer, unless native_output=false; three: torch's. The
    parameter names are those of the nets before the native layer, so old checkpoints load."""
    last_layer = {}
    for channels, native in ((1, True), (1, False), (3, True)):
        net = decoder(4, (channels, 64, 64), native_output=native)
        layers = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
        last_layer[channels, native] = layers[-1]
        assert net.state_dict()[last].shape == layers[-1].weight.shape
    assert type(last_layer[1, True]) is NativeConvTranspose2d
    assert type(last_layer[1, False]) is nn.ConvTranspose2d
    assert type(last_layer[3, True]) is nn.ConvTranspose2d
