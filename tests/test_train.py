"""The training loop: one sharded step equals the same step on one device."""

import json
import os
import re

import chex
import jax
import numpy as np
import pytest

from csg_jax import runs
from csg_jax import methods
from csg_jax import training
from csg_jax.training import loop
from csg_jax import sharding
from csg_jax.errors import CSGError
from conftest import small_config, tensorboard_events


def _one_step(config, devices, batch):
  setup = runs.build(config, devices=devices)
  state = jax.jit(lambda r: runs.create_train_state(setup.model, setup.optimizers, (8, 8, 1),
                                                        r),
                  out_shardings=sharding.replicated(setup.mesh))(setup.rng)
  train_fns = loop.make_train_steps(setup)
  assert set(train_fns) == {"joint"}
  state, metrics = train_fns["joint"](state, jax.device_put(batch,
                                                            sharding.batch_sharding(setup.mesh)))
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow
def test_step_on_8_devices_equals_step_on_1_device():
  assert len(jax.devices()) == 8
  config = small_config()
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(64, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=64).astype(np.int32)}
  state8, metrics8 = _one_step(config, jax.devices(), batch)
  state1, metrics1 = _one_step(config, jax.devices()[:1], batch)
  np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)
  chex.assert_trees_all_close(state8, state1, atol=1e-5, rtol=1e-5)
  chex.assert_tree_all_finite(state8)
  # The step did something: the gate moved off its initial value and stayed projected.
  gate = np.asarray(state8.gate_matrix())
  assert not np.allclose(gate, 0.5)
  np.testing.assert_array_equal(gate.max(axis=0), 1.0)


@pytest.mark.slow
def test_alternate_schedule_switches_objectives_by_epoch(tmp_path):
  """The released procedure on a tiny model: STD epochs leave G alone, CSG epochs move it."""
  config = small_config(num_epochs=3.0, log_every_steps=1, checkpoint_every_steps=0)
  config.model.name = "tiny"
  config.optimizer.update(name="adam", learning_rate=1e-3, weight_decay=0.0,
                          schedule="multistep", milestone_epochs=(1, 2))
  config.csg.schedule = "alternate"
  config.csg.alternate.update(warmup_epochs=1, period=2, min_phase=1, optimizer="adam",
                              learning_rate=1e-3, freeze="^backbone/conv1")
  config.csg.gate.update(optimizer="adam", learning_rate=1e-2, sparsity_weight=1e-3,
                         target_density=0.2)
  results = training.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 68  # ceil(3 * 1437 / 64)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  splits = {r["step"]: r["split"] for r in rows if r["split"].startswith("train")}
  # Rows are keyed by steps done; step index s (row s + 1) lies in epoch floor(s * 64 / 1437).
  assert splits[23] == "train_std" and splits[24] == "train_csg"  # index 23: 1472 >= 1437
  assert splits[45] == "train_csg" and splits[46] == "train_std"  # index 45: 2880 >= 2874
  densities = [r["gate_density"] for r in rows if r["split"] == "train_csg"]
  assert len(densities) == 22
  # Logged after each step's update: the first CSG step's projection scaled every column of the
  # (untouched, all 0.5) gate to max 1, then the sparsity gradient pulled G down.
  assert densities[0] > 0.95
  assert densities[-1] < densities[0] - 0.05
  assert all("gate_density" not in r for r in rows if r["split"] == "train_std")
  gate = np.asarray(runs.load_run(str(tmp_path)).state.gate_matrix())
  np.testing.assert_array_equal(gate.max(axis=0), 1.0)  # projected after every CSG step

  # milestone_epochs count each optimiser's own epochs. STD: epochs 0 and 2; its 1st milestone
  # is the start of its second epoch (epoch 2, rows from 46 on), its 2nd never comes. CSG (and
  # G): only epoch 1, no milestone reached.
  rates = {r["step"]: (r["learning_rate"], r.get("gate_learning_rate")) for r in rows
           if r["split"].startswith("train")}
  expected = {step: (1e-3, None) if step <= 23 else (1e-3, 1e-2) if step <= 45 else (1e-4, None)
              for step in range(1, 69)}
  assert rates.keys() == expected.keys()
  for step, (lr, gate_lr) in expected.items():
    assert rates[step][0] == pytest.approx(lr, rel=1e-6), step
    assert (rates[step][1] is None) == (gate_lr is None), step
    if gate_lr is not None:
      assert rates[step][1] == pytest.approx(gate_lr, rel=1e-6), step


def test_logging_evaluation_and_checkpoint_cadence(tmp_path):
  """log_every_steps, eval_every_steps, checkpoint_every_steps and keep_checkpoints, observed."""
  config = small_config(log_every_steps=5, eval_every_steps=10, checkpoint_every_steps=5,
                        keep_checkpoints=2, tensorboard_images=True)
  config.model.name = "tiny"
  results = training.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 23  # ceil(1437 / 64)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 23]
  # The density in a row is the gate's after that step (not a window mean): the last row's is
  # the final gate's.
  assert train_rows[-1]["gate_density"] == pytest.approx(results["gate_density"], abs=1e-7)
  assert [r["step"] for r in rows if r["split"] == "test"] == [10, 20, 23]  # and the final one
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [20, 23]  # every 5 steps and at the end, the newest 2 kept
  # TensorBoard: the gate and the MI matrix as images, filters per class, at every evaluation.
  scalars, images = tensorboard_events(str(tmp_path / "tensorboard"))
  for tag in ("gate", "test/mi_matrix"):
    assert [step for step, _ in images[tag]] == [10, 20, 23], tag
  for tag in ("filters_per_class/0", "filters_per_class/9", "gate/closed_filters"):
    assert [step for step, _ in scalars[tag]] == [10, 20, 23], tag
  assert sum(scalars[f"filters_per_class/{c}"][-1][1] for c in range(10)) + scalars[
      "gate/closed_filters"][-1][1] == 8  # each of the K = 8 filters (tiny, width 4) once


def test_gate_budget_note_names_the_filters_that_must_close():
  """Under max_normalize an open filter has a gate column maximum of 1: d*C*K < K closes filters."""
  config = small_config(csg=dict(gate=dict(target_density=0.05)))
  notes = lambda c, classes: methods.for_config(c).notes(classes, 64)
  [note] = notes(config, 10)
  assert "d = 0.05 is below 1/C = 0.1 (10 classes)" in note
  assert "budget d*C*K = 32 keeps at most 32 of the 64 filters open" in note
  assert "at most 16 of the 64" in notes(config, 5)[0]
  assert notes(config, 20) == []  # d*C = 1
  config.csg.gate.projection = "clip"
  assert notes(config, 10) == []
  assert notes(small_config(method="std"), 3) == []


def _csg(**gate):
  return methods.for_config(small_config(csg=dict(gate=gate)))


def test_nan_gate_under_the_released_projection_names_the_filter_and_the_step():
  pending = [(3, {"loss": 1.0, "gate_finite": 1.0, "gate_bad_filter": -1.0}),
             (4, {"loss": 1.0, "gate_finite": 0.0, "gate_bad_filter": 7.0}),
             (5, {"loss": float("nan"), "gate_finite": 0.0, "gate_bad_filter": 7.0})]
  with pytest.raises(Exception, match=r"the gate column of filter 7 became NaN at step 5: its "
                                      r"maximum reached exactly 0.*the last good checkpoint is "
                                      r"step 2.*projection=max_normalize"):
    loop._check_finite(pending, 2, _csg(projection="released"))
  with pytest.raises(Exception, match="non-finite gate at step 5"):
    loop._check_finite(pending, 2, _csg(projection="max_normalize"))
  loop._check_finite(pending[:1], 2, _csg(projection="released"))  # finite: nothing to say


def test_closed_filters_are_noted_once_and_logged(tmp_path, capsys):
  """clip with a tiny budget closes every filter within a few steps: one note when they first
  close, `gate_closed` in the training rows; progress lines only every log_every_steps (not at
  the checkpoint-only steps 7, 14, 21), while metrics.jsonl also has rows at checkpoints."""
  config = small_config(log_every_steps=5, checkpoint_every_steps=7, csg=dict(gate=dict(
      projection="clip", target_density=0.01, sparsity_weight=1.0)))
  training.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert out.count("filters are closed at step") == 1
  assert "note: 16 of 16 filters are closed at step" in out
  printed = [int(l.split()[1].split("/")[0]) for l in out.splitlines() if l.startswith("step ")]
  assert printed == [5, 10, 15, 20, 23]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [5, 7, 10, 14, 15, 20, 21, 23]
  final_gate = runs.load_run(str(tmp_path)).state.host_gate()
  assert train_rows[-1]["gate_closed"] == (final_gate.max(axis=0) <= 0).sum() > 0


def test_validation_split_during_training_and_test_once_at_the_end(tmp_path):
  """With data.validation_fraction, evaluation during training reads 'val'; 'test' only at the
  end."""
  config = small_config(num_epochs=0.5, log_every_steps=5, eval_every_steps=5,
                        checkpoint_every_steps=0)
  config.model.name = "tiny"
  config.data.validation_fraction = 0.2
  results = training.train_and_evaluate(config, str(tmp_path))
  sizes = json.loads((tmp_path / "dataset.json").read_text())["split_sizes"]
  assert sizes == {"train": 1150, "test": 360, "val": 287}  # 287 of the 1437 held out
  assert results["step"] == 9  # ceil(0.5 * 1150 / 64): epochs count the remaining examples
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "val"] == [5, 9]
  assert [r["step"] for r in rows if r["split"] == "test"] == [9]
  test_row = next(r for r in rows if r["split"] == "test")
  assert test_row["accuracy"] == pytest.approx(results["accuracy"])
  val_row = [r for r in rows if r["split"] == "val"][-1]
  assert val_row["accuracy"] == pytest.approx(results["val_accuracy"])
  assert val_row["mis"] == pytest.approx(results["val_mis"])
  # tensorboard_images=False (small_config): the same scalars and per-class counts, no figures.
  scalars, images = tensorboard_events(str(tmp_path / "tensorboard"))
  assert images == {}
  assert [step for step, _ in scalars["val/accuracy"]] == [5, 9]
  assert [step for step, _ in scalars["test/accuracy"]] == [9]
  assert [step for step, _ in scalars["gate/closed_filters"]] == [5, 9]  # at each evaluation


def test_a_step_that_cannot_fit_stops_before_anything_is_written(tmp_path, monkeypatch):
  """The trainer compiles every phase's step before the first and compares XLA's memory figure
  with the device's limit (CPU reports none: here a GPU-like limit of 1 KiB is pretended)."""
  from csg_jax.training import memory  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(memory, "device_memory_bytes", lambda devices: 1 << 10)
  workdir = tmp_path / "w"
  with pytest.raises(CSGError) as error:
    training.train_and_evaluate(small_config(), str(workdir))
  message = str(error.value)
  assert re.search(r"^the train \(joint\) step needs \d+\.\d\d GiB per device \(arguments "
                   r"\d+\.\d\d, outputs \d+\.\d\d, temporaries \d+\.\d\d GiB\) but cpu:\d+ has "
                   r"0\.00 GiB: nothing was trained or written\. Use a smaller "
                   r"--config\.batch_size \(now 64, 8 per device\), or "
                   r"--config\.model\.dtype=bfloat16, or more devices\.$", message), message
  assert not workdir.exists() or not os.listdir(workdir)


def test_step_memory_and_device_limits():
  from csg_jax.training import memory  # pylint: disable=g-import-not-at-top

  class Device:
    def __init__(self, stats):
      self.stats = stats

    def memory_stats(self):
      return self.stats

  assert memory.device_memory_bytes([Device({"bytes_limit": 5}), Device({"bytes_limit": 3})]) == 3
  assert memory.device_memory_bytes([Device(None)]) is None  # CPU: no limit
  assert memory.device_memory_bytes([Device({"bytes_in_use": 1})]) is None
  sizes = {"arguments": 3 << 30, "outputs": 1 << 30, "temporaries": 2 << 30, "aliased": 1 << 30,
           "code": 0, "total": 5 << 30}
  memory.check_fits(sizes, 5 << 30, step="eval", device="gpu:0", batch_size=8, num_devices=1,
                    dtype="bfloat16")  # exactly fits: nothing said
  with pytest.raises(CSGError, match=r"needs 5\.00 GiB per device \(arguments 3\.00, outputs "
                                     r"1\.00, temporaries 2\.00 GiB\) but gpu:0 has 4\.00 GiB.*"
                                     r"batch_size \(now 8, 8 per device\), or more devices\.$"):
    memory.check_fits(sizes, 4 << 30, step="eval", device="gpu:0", batch_size=8, num_devices=1,
                      dtype="bfloat16")


def test_frozen_layers_cost_nothing_and_grad_norm_is_over_the_trained_layers():
  """With everything but the head frozen, nothing reads the frozen layers' gradients: the
  compiled step's FLOPs fall to about a forward pass plus the head's gradient, and grad_norm is
  the norm of the head's gradient alone (worked out here with jax.grad on the same loss)."""
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(64, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=64).astype(np.int32)}
  flops, metrics, states = {}, {}, {}
  for freeze in ("", "^backbone/"):
    config = small_config(method="std")
    config.model.name = "tiny"  # two convolutions and the head
    config.optimizer.freeze = freeze
    setup = runs.for_shapes(config, num_classes=10, image_shape=(8, 8, 1),
                            num_train_examples=1000, devices=jax.devices()[:1])
    state = runs.create_train_state(setup.model, setup.optimizers, (8, 8, 1), setup.rng)
    step = loop.make_train_steps(setup)["std"]
    flops[freeze] = step.lower(state, batch).compile().cost_analysis()
    flops[freeze] = float((flops[freeze][0] if isinstance(flops[freeze], list)
                           else flops[freeze])["flops"])
    states[freeze] = state
    _, metrics[freeze] = jax.device_get(step(jax.tree_util.tree_map(np.copy, state), batch))
  # Full step: forward + input and weight gradients (~3 forwards); frozen: ~1 forward.
  assert flops["^backbone/"] < 0.5 * flops[""], flops

  state = states[""]
  def loss(params):
    logits = setup.model.apply({"params": params}, batch["image"], batch["label"], train=True,
                               mutable=["batch_stats"])[0]
    return setup.method.objective(logits, batch["label"], "std")[0]
  grads = jax.grad(loss)(state.params)
  norm = lambda tree: float(np.sqrt(sum(np.vdot(g, g) for g in jax.tree_util.tree_leaves(tree))))
  np.testing.assert_allclose(metrics[""]["grad_norm"], norm(grads), rtol=1e-4)
  np.testing.assert_allclose(metrics["^backbone/"]["grad_norm"], norm(grads["head"]), rtol=1e-4)
  assert norm(grads["head"]) < 0.99 * norm(grads)  # the two norms differ: the test can tell
