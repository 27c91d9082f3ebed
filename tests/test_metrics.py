import pytest
import torch
from linear_gaussian import (
    exact_elbo,
    exact_log_likelihood,
    linear_gaussian_vae,
    sample_data,
)

from vaelab.likelihoods import Gaussian
from vaelab.metrics import (
    MeanPerDimension,
    UnitActivity,
    count_active_units,
    importance_weighted_estimate,
)
from vaelab.nets.linear import LinearDecoder, LinearEncoder
from vaelab.posteriors.gaussian import gaussian_kl
from vaelab.vae import VAE


def estimate(model, x, k, chunk_size=250, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return importance_weighted_estimate(model, x, k, chunk_size, generator)


def standard_error(values: torch.Tensor) -> float:
    return float(values.std() / len(values) ** 0.5)


def test_importance_weighted_bound_lies_between_elbo_and_log_likelihood_and_tightens():
    model = linear_gaussian_vae()
    x = sample_data(model, 512)
    log_likelihood = exact_log_likelihood(model, x)
    elbo = exact_elbo(model, x)["elbo"]
    gap = float((log_likelihood - elbo).mean())
    assert gap == pytest.approx(0.452, abs=1e-3)  # KL(q || p(z|x)) of the doubled variance
    gaps = []
    for k in (1, 10, 100, 1000):
        bound = estimate(model, x, k).log_likelihood
        noise = 3 * standard_error(bound - elbo) + 1e-9
        assert float((bound - elbo).mean()) >= -noise  # ELBO <= L_k
        assert float((log_likelihood - bound).mean()) >= -3 * standard_error(log_likelihood - bound)
        gaps.append(float((log_likelihood - bound).mean()))
    # log p(x) - L_k shrinks with k: 0.44, 0.02, 0.003, ~0 nats here
    assert gaps[0] > 0.35 and gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert abs(gaps[3]) < 0.005


def test_one_sample_bound_is_the_elbo_in_expectation():
    model = linear_gaussian_vae()
    x = sample_data(model, 4)
    repeats = 20_000
    bound = estimate(model, x.repeat(repeats, 1, 1, 1), 1).log_likelihood.view(repeats, 4)
    elbo = exact_elbo(model, x)["elbo"]
    error = bound.std(0) / repeats**0.5
    assert ((bound.mean(0) - elbo).abs() < 4 * error).all()


def test_reconstruction_is_the_average_log_likelihood_of_the_draws():
    model = linear_gaussian_vae()
    x = sample_data(model, 64)
    result = estimate(model, x, 4000)
    expected = exact_elbo(model, x)["reconstruction"]
    assert float((result.reconstruction - expected).abs().max()) < 0.2
    assert float((result.reconstruction - expected).mean()) == pytest.approx(0, abs=0.02)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_estimate_does_not_depend_on_the_chunk_size(dtype, tolerance):
    """Draw i is the same whatever the chunking; only float rounding may differ."""
    model = linear_gaussian_vae(dtype)
    x = sample_data(model, 32).to(dtype)
    reference = estimate(model, x, 64, chunk_size=64, seed=3)
    for chunk_size in (1, 5, 63, 1000):
        result = estimate(model, x, 64, chunk_size=chunk_size, seed=3)
        for got, expected in zip(result, reference, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
    other_seed = estimate(model, x, 64, seed=4).log_likelihood
    assert (other_seed - reference.log_likelihood).abs().max() > 1e-3


def test_estimate_refuses_no_samples():
    model = linear_gaussian_vae()
    with pytest.raises(ValueError, match="num_samples"):
        estimate(model, sample_data(model, 2), 0)


def encoder_with_known_activity() -> VAE:
    """Posterior means m = x[:, :4] * (1, 0.07, 0.2, 0) on standard normal pixels, so
    Cov_x(m_u) = (1, 0.0049, 0.04, 0): units 0 and 2 are active (> 0.01), 1 and 3 are not."""
    model = VAE(LinearEncoder, LinearDecoder, Gaussian(1.0), image_shape=(1, 2, 3), latent_dim=4)
    with torch.no_grad():
        layer = model.encoder.net[0]
        layer.weight.zero_()
        layer.bias.zero_()
        layer.bias[3] = 5.0  # a constant mean: variance 0 whatever its size
        for unit, scale in enumerate((1.0, 0.07, 0.2)):
            layer.weight[unit, unit] = scale
    return model


def test_active_units_counts_units_whose_mean_varies_over_the_data():
    model = encoder_with_known_activity()
    x = torch.randn(20_000, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    activity = UnitActivity(4)
    with torch.no_grad():
        for batch in x.split(3000):  # uneven batches: the sums must not care
            activity.update(model.encode(batch)[0])
        means = model.encode(x)[0]
    variances = activity.compute()
    torch.testing.assert_close(variances, means.double().var(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        variances, torch.tensor([1.0, 0.0049, 0.04, 0.0], dtype=torch.float64), rtol=0.05, atol=1e-9
    )
    assert count_active_units(variances) == 2
    assert count_active_units(variances, threshold=0.001) == 3


def test_kl_per_dimension_is_averaged_over_examples():
    mean = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    log_var = torch.zeros(3, 2)
    metric = MeanPerDimension(2)
    metric.update(gaussian_kl(mean[:2], log_var[:2]))
    metric.update(gaussian_kl(mean[2:], log_var[2:]))
    # KL(N(m, 1) || N(0, 1)) = m^2 / 2: dimension 0 has (2, 0, 0), dimension 1 has (0.5, 0, 0)
    torch.testing.assert_close(metric.compute(), torch.tensor([2 / 3, 1 / 6], dtype=torch.float64))
