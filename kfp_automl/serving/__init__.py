"""The Bento service: request guard, scoring, drift and quality metrics, prediction log.

Shipped inside every Bento with `kfp_automl.runtime` (see components/package/bento.py);
imports of this project stay within serving, runtime, contracts, errors and files.
"""
