"""Standard training: cross-entropy on the network's logits, no variables of its own."""

from csg_jax.methods.base import Method


class STD(Method):
  name = "std"
  summary = "standard training: CE on the logits of all filters"
