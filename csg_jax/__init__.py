"""csg_jax: interpretable CNNs with Class-Specific Gates (Liang et al., ECCV 2020) in JAX/Flax."""

__version__ = "0.1.0"
