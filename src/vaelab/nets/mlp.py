"""Fully connected encoder and decoder (Kingma & Welling 2014, appendix C)."""

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vaelab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation_name: str) -> nn.Sequential:
    """Linear layers of the given sizes with an activation between (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation_name))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        hidden_dims: Sequence[int] = (500,),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.net = mlp([math.prod(input_shape), *hidden_dims, out_features], activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(start_dim=1))


class MLPDecoder(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        output_shape: Sequence[int],
        hidden_dims: Sequence[int] = (500,),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = mlp([latent_dim, *hidden_dims, math.prod(output_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.output_shape)
