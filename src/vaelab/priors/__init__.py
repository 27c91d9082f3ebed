"""Priors p(z): `model/prior=normal` (N(0, I)), `mog` (a learned Gaussian mixture) or `vamp`
(Tomczak & Welling 2018). A new prior is one file here and one YAML under conf/model/prior.

Every prior has `log_prob(z, encode)` (summed over latent dimensions) and
`sample(num_samples, encode, generator)`; `encode` maps images to the model's `Encoded`
posterior parameters, which only the VampPrior uses.
"""
