"""A run's workdir on a local folder: refusing a finished run or a run of another config before
anything is written, resuming with the statistics the run recorded, load_run, and a setup built
from shapes alone."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import small_config
from csg_jax import runs
from csg_jax import training
from csg_jax.data import load as load_lib
from csg_jax.errors import CSGError
from csg_jax.runs import workdir as workdir_lib


def _listing(folder):
  """{relative path: (size, mtime)} of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = (os.path.getsize(path), os.path.getmtime(path))
  return out


def test_finished_run_and_another_configs_run_are_refused_before_anything_is_written(
    straight_run, tmp_path):
  straight_dir, straight = straight_run
  workdir = str(tmp_path / "w")
  shutil.copytree(straight_dir, workdir)
  before = _listing(workdir)
  # The same config: finished, so refused with its result and how to evaluate it.
  assert runs.finished_run(workdir, small_config()) == straight
  with pytest.raises(CSGError, match=r"holds a finished run \(step 23: accuracy "
                                     rf"{straight['accuracy']:.4f}.*launch/evaluate.py"):
    training.train_and_evaluate(small_config(), workdir)
  # Another config: refused naming the differing fields, old -> new.
  with pytest.raises(CSGError, match=r"holds a run of another config \(csg.gate.target_density "
                                     r"0.1 -> 0.2, seed 0 -> 4\); train in another --workdir"):
    training.train_and_evaluate(small_config(seed=4, csg=dict(gate=dict(target_density=0.2))),
                                workdir)
  assert _listing(workdir) == before  # nothing written, nothing touched
  # Bookkeeping fields do not make it another run; a new workdir holds no run.
  assert runs.finished_run(workdir, small_config(log_every_steps=1, keep_checkpoints=9)) == straight
  assert runs.finished_run(str(tmp_path / "new"), small_config()) is None
  assert not os.path.exists(tmp_path / "new")


def test_an_unfinished_run_resumes_with_the_statistics_it_recorded(tmp_path, monkeypatch):
  """A folder of RGB images without data.mean/std: the first part measures the statistics and
  records them; the resumed part reads them from dataset.json and never measures again."""
  rng = np.random.default_rng(1)
  for split, count in (("train", 16), ("test", 4)):
    for cls in ("a", "b"):
      os.makedirs(tmp_path / "imgs" / split / cls)
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(
            tmp_path / "imgs" / split / cls / f"{i}.png")
  config = small_config(batch_size=8, eval_batch_size=8, num_epochs=2.0,
                        checkpoint_every_steps=2)
  config.model.name = "tiny"
  config.data.update(source="folder", path=str(tmp_path / "imgs"),
                     cache_dir=str(tmp_path / "cache"))
  straight = training.train_and_evaluate(config, str(tmp_path / "straight"))
  assert straight["step"] == 8

  workdir = str(tmp_path / "w")
  shutil.copytree(tmp_path / "straight", workdir)
  os.remove(os.path.join(workdir, "results.json"))
  for step in ("6", "8"):  # back to the checkpoint at step 4
    shutil.rmtree(os.path.join(workdir, "checkpoints", step))
  recorded = workdir_lib.recorded_statistics(workdir)
  assert recorded is not None and len(recorded[0]) == 3

  def measure_again(*args, **kwargs):
    raise AssertionError("the resumed run measured the statistics again")

  monkeypatch.setattr(load_lib, "channel_statistics", measure_again)
  assert runs.finished_run(workdir, config) is None  # unfinished: it resumes
  assert training.train_and_evaluate(config, workdir) == straight
  run = runs.load_run(workdir)
  assert run.dataset.statistics == recorded
  assert not len(run.config.data.mean)  # the config stays as given: the statistics are not in it


def test_load_run_restores_the_newest_checkpoint_with_the_runs_own_config(straight_run):
  straight_dir, straight = straight_run
  run = runs.load_run(straight_dir)
  assert run.step == straight["step"] == int(jax.device_get(run.state.step))
  saved = json.loads(open(os.path.join(straight_dir, "config.json")).read())
  assert run.config.model.width == saved["model"]["width"] == 4
  assert run.config.to_dict()["data"]["mean"] in ((), [])  # as given: empty
  recorded = json.loads(open(os.path.join(straight_dir, "dataset.json")).read())
  assert run.dataset.statistics == (tuple(recorded["mean"]), tuple(recorded["std"]))
  assert run.dataset.statistics == ((0.3054,), (0.376,))  # digits' known values
  gate = run.state.host_gate()
  assert gate.shape == (10, run.model.num_filters)


def test_load_run_names_what_is_missing(tmp_path):
  with pytest.raises(CSGError, match="holds no config.json: is it a csg_jax workdir"):
    runs.load_run(str(tmp_path))
  workdir_lib.write_config(str(tmp_path), small_config())
  with pytest.raises(CSGError, match="holds no checkpoint yet"):
    runs.load_run(str(tmp_path))


def test_setup_from_shapes_equals_the_setup_built_from_the_data():
  config = small_config()
  built = runs.build(config, devices=jax.devices()[:1])
  shaped = runs.for_shapes(config, num_classes=10, image_shape=(8, 8, 1),
                           num_train_examples=len(built.dataset.splits["train"]),
                           devices=jax.devices()[:1])
  assert shaped.dataset is None and shaped.plan == built.plan
  assert shaped.image_shape == built.image_shape == built.dataset.image_shape
  same = jax.tree_util.tree_map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype),
                                shaped.abstract_state(), built.abstract_state())
  assert all(jax.tree_util.tree_leaves(same))
