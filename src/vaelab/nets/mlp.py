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


INITS = ("torch", "he")


def initialize(layer: nn.Linear, init: str) -> None:
    """`torch`: PyTorch's default, weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)); `he`: weights
    N(0, 2/fan_in) and zero biases (He et al. 2015; Tomczak & Welling 2018's MLPs).

    With `torch`, a tanh MLP on MNIST starts with codes that hardly depend on x (the spread of
    the posterior means over a batch is about 0.006 against a noise scale of 1); a model whose
    KL does not pull the codes apart, such as the VampPrior's, then stays at that point.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {list(INITS)}")
    if init == "he":
        nn.init.kaiming_normal_(layer.weight)
        nn.init.zeros_(layer.bias)


def mlp(sizes: Sequence[int], activation_name: str, init: str = "torch") -> nn.Sequential:
    """Linear layers of the given sizes with an activation between (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        initialize(layers[-1], init)
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
        init: str = "torch",
    ) -> None:
        super().__init__()
        self.net = mlp([math.prod(input_shape), *hidden_dims, out_features], activation, init)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(start_dim=1))


class MLPDecoder(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        output_shape: Sequence[int],
        hidden_dims: Sequence[int] = (500,),
        activation: str = "tanh",
        init: str = "torch",
    ) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = mlp([latent_dim, *hidden_dims, math.prod(output_shape)], activation, init)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.output_shape)
