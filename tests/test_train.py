"""The training loop: sharding equivalence, an end-to-end run, resume after a crash."""

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
from csg_jax.config_base import base_config


def _small_config(**overrides):
  config = base_config("digits")
  config.model.name = "resnet8"
  config.model.width = 4
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 1.0
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.update(overrides)
  return config


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
  config = _small_config()
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


def _final_state(config, workdir):
  """The state stored in the newest checkpoint of a workdir."""
  dataset = data_lib.load_dataset(config.data)
  model = models.build_model(config.model, dataset.num_classes, use_gate=True)
  optimizers = optimizer_lib.make_optimizers(config, {"main": 1})
  template = jax.eval_shape(lambda: train.create_train_state(
      model, optimizers, dataset.image_shape, jax.random.PRNGKey(0)))
  ckpt = checkpoint_lib.Checkpointer(workdir, every_steps=1, keep=3)
  mesh = parallel.make_mesh()
  state, step = ckpt.restore_latest(checkpoint_lib.abstract_like(template,
                                                                 parallel.replicated(mesh)))
  ckpt.close()
  return jax.device_get(state), step


class _Crash(Exception):
  pass


def test_crash_then_resume_ends_where_the_uninterrupted_run_ends(tmp_path, monkeypatch):
  config = _small_config()
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert straight["step"] == 23  # ceil(1437 / 64)

  real_batches = data_lib.train_batches

  def crashing_batches(*args, **kwargs):
    for i, batch in enumerate(real_batches(*args, **kwargs)):
      if kwargs["start_step"] + i == 15:
        raise _Crash()
      yield batch

  monkeypatch.setattr(data_lib, "train_batches", crashing_batches)
  with pytest.raises(_Crash):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["10"]
  monkeypatch.setattr(data_lib, "train_batches", real_batches)
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed == straight

  state_a, step_a = _final_state(config, str(tmp_path / "straight"))
  state_b, step_b = _final_state(config, str(tmp_path / "resumed"))
  assert step_a == step_b == 23
  jax.tree_util.tree_map(np.testing.assert_array_equal, state_a, state_b)  # bit-identical on CPU

  results = json.loads((tmp_path / "resumed" / "results.json").read_text())
  assert set(results) == {"method", "dataset", "model", "step", "accuracy", "mis", "gate_density"}
  assert results["method"] == "csg" and 0 < results["gate_density"] <= 1
  rows = [json.loads(l) for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
  assert {r["split"] for r in rows} == {"train", "test"}
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(tmp_path / "resumed" / "tensorboard"))
