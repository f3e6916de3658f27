"""Crash, preemption, corrupt checkpoints, fine-tuning, locks, NaNs and bad configs."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, interrupt_batches_at, small_config
from csg_jax import data as data_lib
from csg_jax import runs
from csg_jax import training
from csg_jax.runs import lock as workdir_lock
from csg_jax.errors import CSGError


def _assert_same_final_state(workdir_a, workdir_b):
  a, b = runs.load_run(workdir_a), runs.load_run(workdir_b)
  assert a.step == b.step
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(a.state),
                         jax.device_get(b.state))  # bit-identical on CPU


class _Crash(Exception):
  pass


def test_crash_then_resume_ends_where_the_uninterrupted_run_ends(straight_run, tmp_path,
                                                                 monkeypatch):
  straight_dir, straight = straight_run
  assert straight["step"] == 23  # ceil(1437 / 64)
  workdir = str(tmp_path / "crashed")

  def crash(_):
    raise _Crash()

  real = interrupt_batches_at(monkeypatch, 15, crash)
  with pytest.raises(_Crash):
    training.train_and_evaluate(small_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # released on crash
  monkeypatch.setattr(data_lib, "train_batches", real)
  assert training.train_and_evaluate(small_config(), workdir) == straight
  _assert_same_final_state(straight_dir, workdir)


def test_sigterm_checkpoints_the_current_step_and_resumes_exactly(straight_run, tmp_path,
                                                                  monkeypatch):
  straight_dir, straight = straight_run
  workdir = str(tmp_path / "preempted")
  real = interrupt_batches_at(monkeypatch, 7, lambda _: os.kill(os.getpid(), signal.SIGTERM))
  with pytest.raises(CSGError, match="stopped by SIGTERM after step 8"):
    training.train_and_evaluate(small_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["8"]
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  monkeypatch.setattr(data_lib, "train_batches", real)
  assert training.train_and_evaluate(small_config(), workdir) == straight
  _assert_same_final_state(straight_dir, workdir)


@pytest.mark.slow
def test_sigterm_on_slow_steps_exits_within_a_few_steps(tmp_path):
  """Steps of ~0.5 s (ResNet-20 on 32 px images, 2 cores) logged every 50 steps: the loop must
  not dispatch far ahead of the device, or SIGTERM waits for every queued step (it took 20 s and
  30 steps before the bound on steps in flight). The checkpoint is that of the step in flight
  when the signal came, written within a few steps' time."""
  workdir = tmp_path / "w"
  process = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--workdir={workdir}",
       "--config.model.name=resnet20", "--config.data.image_size=32", "--config.num_epochs=20",
       "--config.log_every_steps=50", "--config.checkpoint_every_steps=0"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path))
  for line in process.stdout:  # the step loop starts right after this line
    if line.startswith("Training"):
      break
  started = time.perf_counter()
  time.sleep(8)
  process.send_signal(signal.SIGTERM)
  signalled = time.perf_counter()
  output = process.communicate(timeout=120)[0]
  to_exit = time.perf_counter() - signalled
  assert process.returncode == 2, output
  (step,) = [int(d) for d in os.listdir(workdir / "checkpoints")]
  assert f"stopped by SIGTERM after step {step}; checkpoint saved" in output
  step_time = (signalled - started) / step  # an upper bound: compiling is in it
  assert to_exit < 5 + 3 * step_time, (to_exit, step, step_time)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(straight_run, tmp_path,
                                                                  capsys):
  workdir = str(tmp_path / "copy")
  shutil.copytree(straight_run[0], workdir)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps == [10, 20, 23]
  newest = os.path.join(workdir, "checkpoints", "23")
  victims = [os.path.join(r, f) for r, _, fs in os.walk(newest) for f in fs
             if os.path.getsize(os.path.join(r, f)) > 100]
  for path in victims:  # flip bytes in the middle of every data file, keeping sizes
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(b"\xff" * 16)
  run = runs.load_run(workdir)
  assert run.step == 20
  out = capsys.readouterr().out
  assert "checkpoint at step 23 is unusable" in out
  # The SHA-256 manifest caught it, before orbax read a byte (damage may still parse).
  assert "step 23 is unusable (files changed since it was written:" in out

  # With every checkpoint damaged the unfinished run refuses instead of restarting from step 0.
  os.remove(os.path.join(workdir, "results.json"))
  for step in ("10", "20"):
    shutil.rmtree(os.path.join(workdir, "checkpoints", step, "default"))
  with pytest.raises(CSGError, match="Refusing to restart from step 0"):
    training.train_and_evaluate(small_config(), workdir)


def test_init_from_loads_weights_and_names_mismatches(straight_run, tmp_path):
  source = straight_run[0]
  with pytest.raises(CSGError, match=r"params/backbone/stage1_block1/conv1/kernel: checkpoint "
                                    r"\(3, 3, 4, 4\) vs model \(3, 3, 8, 8\)"):
    training.train_and_evaluate(small_config(init_from=source, model=dict(
        name="resnet8", width=8, dtype="float32")), str(tmp_path / "wide"))
  assert not os.path.exists(tmp_path / "wide")  # nothing written
  with pytest.raises(CSGError, match="does not exist"):
    training.train_and_evaluate(small_config(init_from=str(tmp_path / "nope")), str(tmp_path / "x"))

  # Same architecture, the head skipped: everything else is copied, the head starts fresh.
  config = small_config(init_from=source, init_from_skip="^head/", num_epochs=0.05)
  workdir = str(tmp_path / "finetune")
  training.train_and_evaluate(config, workdir)
  tuned, base = runs.load_run(workdir), runs.load_run(source)
  assert tuned.step == 2  # ceil(0.05 * 1437 / 64)
  # After 2 steps the trunk is still near the source weights, far from a fresh initialisation.
  src = np.asarray(base.state.params["backbone"]["stem_conv"]["kernel"])
  new = np.asarray(tuned.state.params["backbone"]["stem_conv"]["kernel"])
  assert np.abs(new - src).max() < 0.1 * np.abs(src).max()


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock_path = tmp_path / workdir_lock.LOCK_NAME
    import json, socket  # pylint: disable=g-import-not-at-top,multiple-imports
    lock_path.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    with pytest.raises(CSGError, match=f"another run \\(pid {sleeper.pid}"):
      training.train_and_evaluate(small_config(), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [workdir_lock.LOCK_NAME]
  finally:
    sleeper.kill()
    sleeper.wait()
  with workdir_lock.WorkdirLock(str(tmp_path)):  # the owner is dead: taken over
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  assert not lock_path.exists()


def test_non_finite_loss_stops_with_the_step_and_no_later_checkpoint(tmp_path, monkeypatch):
  def poison(batch):
    batch["image"][:] = np.nan

  interrupt_batches_at(monkeypatch, 12, poison)
  workdir = str(tmp_path / "nan")
  with pytest.raises(CSGError, match="non-finite loss at step 13.*last good checkpoint is step 10"):
    training.train_and_evaluate(small_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
  assert not os.path.exists(os.path.join(workdir, "results.json"))


# Each bad config must fail before anything is written, with one line naming the field.
_BAD_CONFIGS = [
    (dict(batch_size=-8), "config.batch_size is -8"),
    (dict(batch_size=12), "multiple of the 8 devices"),
    (dict(eval_batch_size=0), "config.eval_batch_size is 0"),
    (dict(num_epochs=0.0), "config.num_epochs is 0.0"),
    (dict(method="gated"), "config.method is 'gated'"),
    (dict(csg=dict(gated_loss_weight=-1.0)), "config.csg.gated_loss_weight is -1.0"),
    (dict(csg=dict(gate=dict(sparsity_weight=-0.1))), "config.csg.gate.sparsity_weight is -0.1"),
    (dict(csg=dict(gate=dict(target_density=0.0))), "config.csg.gate.target_density is 0.0"),
    (dict(csg=dict(gate=dict(target_density=1.2))), "config.csg.gate.target_density is 1.2"),
    (dict(csg=dict(gate=dict(init=2.0))), "config.csg.gate.init is 2.0"),
    (dict(csg=dict(schedule="sometimes")), "config.csg.schedule is 'sometimes'"),
    (dict(csg=dict(gate=dict(projection="softmax"))), "config.csg.gate.projection is 'softmax'"),
    (dict(csg=dict(alternate=dict(min_phase=3))), "config.csg.alternate.min_phase"),
    (dict(csg=dict(alternate=dict(freeze="stage3["))), "not a valid regular expression"),
    (dict(csg=dict(target_density=0.05)),  # a field of an earlier version, set in a config file
     "config.csg.target_density was renamed to config.csg.gate.target_density"),
    (dict(optimizer=dict(name="lamb")), "config.optimizer.name is 'lamb'"),
    (dict(optimizer=dict(schedule="linear")), "config.optimizer.schedule is 'linear'"),
    (dict(optimizer=dict(learning_rate=-0.1)), "config.optimizer.learning_rate"),
    (dict(optimizer=dict(freeze="stage[")), "not a valid regular expression"),
    (dict(optimizer=dict(schedule="multistep", milestone_epochs=(60, 0))),
     "config.optimizer.milestone_epochs must be positive whole numbers"),
    (dict(optimizer=dict(milestone_epochs=(60,))),  # the default schedule is cosine
     "config.optimizer.milestone_epochs needs optimizer.schedule='multistep'"),
    (dict(model=dict(name="vgg16")), "unknown model 'vgg16'"),
    (dict(model=dict(dtype="int8")), "config.model.dtype is 'int8'"),
    (dict(data=dict(num_classes=7)), "7"),
    (dict(data=dict(source="folder")), "data.path"),
    (dict(data=dict(source="folder", path="/no/such/images.tar.gz")), "does not exist"),
    (dict(init_from="/no/such/run"), "init_from"),
]


@pytest.mark.parametrize("overrides,message", _BAD_CONFIGS)
def test_bad_config_catalogue(tmp_path, overrides, message):
  config = small_config()
  for key, value in overrides.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  workdir = tmp_path / "w"
  with pytest.raises(CSGError) as info:
    training.train_and_evaluate(config, str(workdir))
  assert message in str(info.value)
  assert "\n" not in str(info.value)
  assert not workdir.exists()
