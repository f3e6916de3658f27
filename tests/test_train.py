"""The training loop: one sharded step equals the same step on one device."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csg_jax import checkpoint as checkpoint_lib
from csg_jax import data as data_lib
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax import parallel
from csg_jax import train
from conftest import small_config


def _one_step(config, devices, batch):
  mesh = parallel.make_mesh(devices)
  model = models.build_model(config.model, 10, use_gate=True)
  optimizers = optimizer_lib.make_optimizers(config, {"main": 100})
  state = jax.jit(lambda r: train.create_train_state(model, optimizers, (8, 8, 1), r),
                  out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  train_fns, _ = train.make_step_fns(model, optimizers, config, mesh)
  state, metrics = train_fns["joint"](state, jax.device_put(batch, parallel.batch_sharding(mesh)))
  return jax.device_get(state), jax.device_get(metrics)


def test_step_on_8_devices_equals_step_on_1_device():
  assert len(jax.devices()) == 8
  config = small_config()
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(64, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=64).astype(np.int32)}
  state8, metrics8 = _one_step(config, jax.devices(), batch)
  state1, metrics1 = _one_step(config, jax.devices()[:1], batch)
  np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)
  for tree8, tree1 in [(state8.params, state1.params), (state8.gates, state1.gates),
                       (state8.batch_stats, state1.batch_stats)]:
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                           tree8, tree1)
  # The step did something: the gate moved off its initial value and stayed projected.
  gate = np.asarray(state8.gate_matrix())
  assert not np.allclose(gate, 0.5)
  np.testing.assert_array_equal(gate.max(axis=0), 1.0)
