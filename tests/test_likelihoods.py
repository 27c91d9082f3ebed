import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal, kl_divergence

from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli, BernoulliLogProb, Gaussian, GaussianLearnedVariance
from vaelab.posteriors.gaussian import gaussian_kl


def test_gaussian_kl_matches_hand_computation():
    mean = torch.tensor([0.0, 1.0, -2.0])
    log_var = torch.tensor([0.0, math.log(4.0), math.log(0.25)])
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2
    expected = torch.tensor(
        [0.0, (1 + 4 - 1 - math.log(4)) / 2, (4 + 0.25 - 1 - math.log(0.25)) / 2]
    )
    torch.testing.assert_close(gaussian_kl(mean, log_var), expected)


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_var = torch.randn(5, 7), torch.randn(5, 7)
    reference = kl_divergence(Normal(mean, torch.exp(0.5 * log_var)), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mean, log_var), reference)
    assert (gaussian_kl(mean, log_var) >= 0).all()


def test_bernoulli_log_prob_by_hand():
    x = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    logits = torch.tensor([[[[0.0, 0.0], [math.log(3.0), math.log(3.0)]]]])  # p = .5 .5 .75 .75
    expected = math.log(0.5) + math.log(0.5) + math.log(0.75) + math.log(0.25)
    assert Bernoulli().log_prob(x, logits).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(Bernoulli().mean(logits), torch.sigmoid(logits))


def test_bernoulli_broadcasts_over_samples():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    logits = torch.randn(5, 3, 1, 4, 4)
    values = Bernoulli().log_prob(x, logits)
    assert values.shape == (5, 3)
    torch.testing.assert_close(values[2], Bernoulli().log_prob(x, logits[2]))


def test_bernoulli_log_prob_and_gradient_match_torch_distributions():
    """The CPU kernel against torch.distributions on extreme logits, grey x and several draws."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 4, 4)
    x[0] = x[0].round()
    logits = 6 * torch.randn(2, 3, 1, 4, 4)
    logits[0, 0, 0, 0, :4] = torch.tensor([-100.0, 100.0, -30.0, 30.0])
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    values = Bernoulli().log_prob(x, mine)
    reference = TorchBernoulli(logits=theirs, validate_args=False).log_prob(x).flatten(2).sum(-1)
    torch.testing.assert_close(values, reference)
    weights = torch.randn(2, 3)
    (values * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad)


def test_bernoulli_kernel_passes_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BernoulliLogProb.apply, (logits, x))


def test_bernoulli_takes_half_precision_logits_in_float32():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((2, 1, 3, 3), 0.5))
    logits = torch.randn(2, 1, 3, 3).to(torch.bfloat16)
    values = Bernoulli().log_prob(x, logits)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, Bernoulli().log_prob(x, logits.float()))


def test_gaussian_fixed_variance_by_hand():
    c = 0.5
    x = torch.tensor([[[[1.0, 2.0]]]])
    mu = torch.tensor([[[[0.0, 2.5]]]])
    # log N(x; mu, c) = -(x - mu)^2 / (2c) - log(2 pi c) / 2, summed over both pixels
    expected = -(1.0 + 0.25) / (2 * c) - math.log(2 * math.pi * c)
    assert Gaussian(variance=c).log_prob(x, mu).item() == pytest.approx(expected, rel=1e-6)
    reference = Normal(mu, math.sqrt(c)).log_prob(x).sum()
    assert Gaussian(variance=c).log_prob(x, mu).item() == pytest.approx(reference.item(), rel=1e-6)


def test_gaussian_learned_variance_matches_normal():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 2, 2)
    params = torch.randn(4, 6, 2, 2)
    mean, log_var = params[:, :3], params[:, 3:]
    reference = Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(GaussianLearnedVariance().log_prob(x, params), reference)
    torch.testing.assert_close(GaussianLearnedVariance().mean(params), mean)


def test_invalid_variance_and_data_are_refused():
    with pytest.raises(ConfigError, match="variance"):
        Gaussian(variance=0.0)
    with pytest.raises(ConfigError, match="binary"):
        Bernoulli().check_data(binary=False)
    Bernoulli().check_data(binary=True)
