"""The conv nets of Locatello et al. 2019's study (disentanglement_lib's conv_encoder and
deconv_decoder), for 64x64 images.

Encoder: 4x4 convs of 32 and 32 channels, then 2x2 convs of 64 and 64, each with stride 2
(64 -> 32 -> 16 -> 8 -> 4), a dense layer of 256, then the output layer. Decoder: dense 256 and
1024 (64 x 4 x 4), then 4x4 transposed convs of 64, 32, 32 and the image's channels, each with
stride 2. ReLU between layers; TensorFlow's "same" padding is 1 for the 4x4 layers, 0 for 2x2.
`channels_last` and `native_output` as in `vaelab.nets.conv` (channels-last, a step of these
nets: 45.0 against 47.7 ms, 2 threads).
"""

from collections.abc import Sequence

from torch import Tensor, nn

from vaelab.errors import ConfigError
from vaelab.nets.conv import memory_format, output_layer
from vaelab.nets.mlp import make_activation

SIDE = 64


def check_shape(shape: Sequence[int], channels: Sequence[int]) -> None:
    if tuple(shape[1:]) != (SIDE, SIDE):
        raise ConfigError(
            f"Locatello et al.'s conv nets take 64x64 images, got {tuple(shape[1:])}: "
            "use data=sprites or data=dsprites, or model=conv_vae"
        )
    if len(channels) != 4:
        raise ConfigError(f"model.encoder.channels needs 4 conv widths, got {list(channels)}")


class LocatelloEncoder(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (32, 32, 64, 64),
        hidden_dim: int = 256,
        activation: str = "relu",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_shape(input_shape, channels)
        layers: list[nn.Module] = []
        widths = [input_shape[0], *channels]
        for i, kernel in enumerate((4, 4, 2, 2)):
            layers += [nn.Conv2d(widths[i], widths[i + 1], kernel, 2, 1 if kernel == 4 else 0)]
            layers += [make_activation(activation)]
        self.net = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(channels[-1] * 4 * 4, hidden_dim),
            make_activation(activation),
            nn.Linear(hidden_dim, out_features),
        )
        self.memory_format = memory_format(channels_last)
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))


class LocatelloDecoder(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        output_shape: Sequence[int],
        channels: Sequence[int] = (32, 32, 64, 64),
        hidden_dim: int = 256,
        activation: str = "relu",
        channels_last: bool = True,
        native_output: bool = True,
    ) -> None:
        super().__init__()
        check_shape(output_shape, channels)
        widths = [channels[-1], channels[-1], *reversed(channels[:2]), output_shape[0]]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, hidden_dim),
            make_activation(activation),
            nn.Linear(hidden_dim, widths[0] * 4 * 4),
            make_activation(activation),
            nn.Unflatten(-1, (widths[0], 4, 4)),
        ]
        for i in range(3):
            layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1)]
            layers += [make_activation(activation)]
        layers += [output_layer(widths[3], widths[4], 4, native_output)]
        self.net = nn.Sequential(*layers)
        self.to(memory_format=memory_format(channels_last))  # the weights: oneDNN then keeps NHWC

    def forward(self, z: Tensor) -> Tensor:
        batch_shape = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))
        return out.reshape(*batch_shape, *out.shape[1:])
