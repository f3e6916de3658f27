"""Test set-up: 8 fake CPU devices, so sharding is exercised on any machine."""

import os

import jax
import pytest

# Must happen before JAX starts its backends. Tests that want one device pass devices[:1].
jax.config.update("jax_num_cpu_devices", 8)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
CIFAR_TARBALL = os.path.join(SHARED_DATA, "cifar10-jpeg.tar.gz")


@pytest.fixture
def cifar_tarball():
  if not os.path.exists(CIFAR_TARBALL):
    pytest.skip(f"real CIFAR-10 data not found at {CIFAR_TARBALL} (only on development machines)")
  return CIFAR_TARBALL
