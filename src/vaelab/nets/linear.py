"""One linear map each way: the linear autoencoder that spans the PCA subspace."""

from collections.abc import Sequence

from vaelab.nets.mlp import MLPDecoder, MLPEncoder


class LinearEncoder(MLPEncoder):
    def __init__(self, input_shape: Sequence[int], out_features: int) -> None:
        super().__init__(input_shape, out_features, hidden_dims=())


class LinearDecoder(MLPDecoder):
    def __init__(self, latent_dim: int, output_shape: Sequence[int]) -> None:
        super().__init__(latent_dim, output_shape, hidden_dims=())
