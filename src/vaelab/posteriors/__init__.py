"""Posteriors q(z|x): how a model turns its encoder's features into codes and their densities.

`model/posterior=gaussian` (the diagonal Gaussian of Kingma & Welling 2014) or `iaf` (Kingma et
al. 2016). A new posterior is one file here and one YAML under conf/model/posterior.
"""
