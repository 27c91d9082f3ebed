"""Strided-convolution encoder and transposed-convolution decoder (Burgess et al. 2018 style).

Each 4x4 convolution with stride 2 halves the side; the encoder halves while the side is even and
above 4, so 28 -> 14 -> 7, 32 -> 16 -> 8 -> 4 and 64 -> 32 -> 16 -> 8 -> 4. The decoder mirrors it.

With `channels_last` (the default) the conv weights and the images they see are stored
channels-last (NHWC), which takes oneDNN's faster kernels on a CPU: a training step of the conv
VAE on 64x64 sprites at batch 64 took 5 to 8% less time (2 threads, alternated runs; README,
speed). The arithmetic is the same up to float rounding.

With `native_output` (the default) a decoder's transposed conv to one channel runs its forward on
a CPU by PyTorch's own kernel rather than oneDNN's: for 64 images of 64x64 it took 4.3 against
7.4 ms (channels-last input, 2 threads, median of 7 alternated rounds; README, speed). Its
gradients are oneDNN's as before.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import ConfigError
from vaelab.nets.mlp import make_activation, mlp


def conv_depth(height: int, width: int) -> int:
    """How many stride-2 layers an image of this size takes (ConfigError when it cannot)."""
    if height != width or height % 4 != 0 or height < 8:
        raise ConfigError(
            f"conv nets need square images whose side is a multiple of 4 (28, 32, 64, ...), "
            f"got {height}x{width}: use model=mlp_vae for other sizes"
        )
    depth, side = 0, height
    while side % 2 == 0 and side > 4:
        side //= 2
        depth += 1
    return depth


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


class NativeConvTranspose2d(nn.ConvTranspose2d):
    """A transposed conv whose forward on a CPU is PyTorch's own kernel (im2col and a GEMM), not
    oneDNN's; the same parameters, so checkpoints load either way."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or not self.native_fits(x):
            return super().forward(x, output_size)
        return torch.ops.aten.slow_conv_transpose2d(
            x,
            self.weight,
            self.kernel_size,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
        )

    def native_fits(self, x: Tensor) -> bool:
        """The cases PyTorch's kernel takes as torch's layer would: a batch of images on a CPU,
        in the weights' dtype (not under autocast), one group."""
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype == self.weight.dtype
            and not torch.is_autocast_enabled("cpu")
            and self.groups == 1
        )


def output_layer(
    in_channels: int, out_channels: int, kernel: int, native: bool
) -> nn.ConvTranspose2d:
    """A decoder's last transposed conv (stride 2, padding 1); `native`: PyTorch's CPU kernel
    where it is the faster, one output channel."""
    layer = NativeConvTranspose2d if native and out_channels == 1 else nn.ConvTranspose2d
    return layer(in_channels, out_channels, kernel, 2, 1)


class ConvEncoder(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: int = 32,
        hidden_dim: int = 256,
        activation: str = "relu",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        depth = conv_depth(height, width)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 4, 2, 1)]
            layers += [make_activation(activation)]
        side = height >> depth
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(
            mlp([channels * side * side, hidden_dim, hidden_dim], activation),
            make_activation(activation),
            nn.Linear(hidden_dim, out_features),
        )
        self.memory_format = memory_format(channels_last)
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x.contiguous(memory_format=self.memory_format)))


class ConvDecoder(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        output_shape: Sequence[int],
        channels: int = 32,
        hidden_dim: int = 256,
        activation: str = "relu",
        channels_last: bool = True,
        native_output: bool = True,
    ) -> None:
        super().__init__()
        out_channels, height, width = output_shape
        depth = conv_depth(height, width)
        side = height >> depth
        self.head = nn.Sequential(
            mlp([latent_dim, hidden_dim, hidden_dim, channels * side * side], activation),
            make_activation(activation),
            nn.Unflatten(-1, (channels, side, side)),
        )
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), make_activation(activation)]
        layers += [output_layer(channels, out_channels, 4, native_output)]
        self.deconv = nn.Sequential(*layers)
        self.memory_format = memory_format(channels_last)
        self.to(memory_format=self.memory_format)

    def forward(self, z: Tensor) -> Tensor:
        batch_shape = z.shape[:-1]
        features = self.head(z.reshape(-1, z.shape[-1]))
        out = self.deconv(features.contiguous(memory_format=self.memory_format))
        return out.reshape(*batch_shape, *out.shape[1:])
