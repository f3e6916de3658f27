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


def test_alternate_schedule_switches_objectives_by_epoch(tmp_path):
  """The released procedure on a tiny model: STD epochs leave G alone, CSG epochs move it."""
  config = small_config(num_epochs=3.0, log_every_steps=1, checkpoint_every_steps=0)
  config.model.name = "tiny"
  config.optimizer.update(name="adam", learning_rate=1e-3, weight_decay=0.0,
                          schedule="multistep", milestones=(0.4, 0.6, 0.8))
  config.csg.update(schedule="alternate", warmup_epochs=1, period=2, min_phase=1,
                    csg_optimizer="adam", csg_learning_rate=1e-3, gate_optimizer="adam",
                    gate_learning_rate=1e-2, sparsity_weight=1e-3, target_density=0.2,
                    csg_freeze="^backbone/conv1")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 68  # ceil(3 * 1437 / 64)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  splits = {r["step"]: r["split"] for r in rows if r["split"].startswith("train")}
  # Rows are keyed by steps done; step index s (row s + 1) lies in epoch floor(s * 64 / 1437).
  assert splits[23] == "train_std" and splits[24] == "train_csg"  # index 23: 1472 >= 1437
  assert splits[45] == "train_csg" and splits[46] == "train_std"  # index 45: 2880 >= 2874
  densities = [r["gate_density"] for r in rows if r["split"] == "train_csg"]
  assert len(densities) == 22
  assert densities[0] == 0.5  # G untouched by the STD epoch before it (its init value)
  assert densities[1] > 0.95  # the first projection scaled every column's max to 1
  assert densities[-1] < densities[1] - 0.05  # then the hinge pulled G down
  gate = np.asarray(train.load_run(str(tmp_path)).state.gate_matrix())
  np.testing.assert_array_equal(gate.max(axis=0), 1.0)  # projected after every CSG step
