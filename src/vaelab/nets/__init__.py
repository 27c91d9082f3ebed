"""Encoders and decoders as plain nn.Modules.

An encoder maps images (B, C, H, W) to features (B, out_features); the VAE asks for
2 * latent_dim features (mean and log-variance from one shared trunk). A decoder maps codes
(N, latent_dim) to the likelihood's parameters (N, C_out, H, W).
"""
