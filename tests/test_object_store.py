"""Workdirs on an object store: a real S3-compatible server (moto's, started here), real s3fs.

Skipped where moto or s3fs is not installed (both are in the test extra).
"""

import glob
import json
import os
import tempfile

import jax
import numpy as np
import pytest

from conftest import small_config
from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import runs
from csg_jax import training
from csg_jax.errors import CSGError
from csg_jax.evaluation import report
from csg_jax.runs import checkpoint as checkpoint_lib

pytestmark = pytest.mark.slow  # a local object-store server, whole runs on it

BUCKET = "csg-test"


@pytest.fixture(scope="module")
def bucket():
  """s3://csg-test on a local moto server, with the AWS_* variables pointing at it."""
  moto_server = pytest.importorskip("moto.server")
  pytest.importorskip("s3fs")
  server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
  server.start()
  host, port = server.get_host_and_port()
  with pytest.MonkeyPatch.context() as env:
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
      env.setenv(key, value)
    import boto3  # pylint: disable=g-import-not-at-top  (comes with moto)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
  server.stop()


def _objects(prefix):
  import boto3  # pylint: disable=g-import-not-at-top
  pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(
      Bucket=BUCKET, Prefix=prefix)
  return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))


def test_fileio_round_trips_on_s3(bucket, tmp_path):
  root = f"{bucket}/fileio"
  fileio.write_json_atomic(fileio.join(root, "a.json"), {"x": [1, 2]})
  fileio.write_text_atomic(fileio.join(root, "sub", "b.txt"), "hello")
  assert _objects("fileio/") == ["a.json", "sub/b.txt"]  # one object each, no temporaries
  assert fileio.read_json(fileio.join(root, "a.json")) == {"x": [1, 2]}
  assert fileio.listdir(root) == ["a.json", "sub"]
  assert fileio.walk_files(root) == ["a.json", "sub/b.txt"]
  assert fileio.isdir(fileio.join(root, "sub")) and not fileio.exists(fileio.join(root, "c"))
  assert fileio.listdir(fileio.join(root, "nothing")) == []

  # Exclusive creation: the second writer is told the file exists.
  assert fileio.create_exclusive(fileio.join(root, "lock"), "me")
  assert not fileio.create_exclusive(fileio.join(root, "lock"), "you")
  assert fileio.read_text(fileio.join(root, "lock")) == "me"

  fileio.download_tree(root, str(tmp_path / "down"))
  assert (tmp_path / "down" / "sub" / "b.txt").read_text() == "hello"
  fileio.upload_tree(str(tmp_path / "down"), f"{bucket}/copy")
  assert _objects("copy/") == ["a.json", "lock", "sub/b.txt"]

  fileio.remove(fileio.join(root, "lock"))
  fileio.rmtree(fileio.join(root, "sub"))
  assert _objects("fileio/") == ["a.json"]


def test_missing_bucket_is_one_clear_error(bucket):
  with pytest.raises(CSGError, match="s3://no-such-bucket-here/w/x.json: .*credentials"):
    fileio.write_json_atomic("s3://no-such-bucket-here/w/x.json", {})


def _stages():
  """The local folders where checkpoints and metrics of object-store workdirs are staged."""
  return set(glob.glob(os.path.join(tempfile.gettempdir(), "csg_jax-*")))


class _Crash(Exception):
  pass


def test_train_crash_resume_evaluate_on_s3(bucket, straight_run, monkeypatch):
  """The crash-and-resume scenario of test_reliability, with the workdir in a bucket."""
  straight_dir, straight = straight_run
  workdir = f"{bucket}/run"
  stages_before = _stages()
  real = data_lib.train_batches

  def crashing(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if kwargs["start_step"] + i == 15:
        raise _Crash()
      yield batch

  monkeypatch.setattr(data_lib, "train_batches", crashing)
  with pytest.raises(_Crash):
    training.train_and_evaluate(small_config(), workdir)
  objects = _objects("run/")
  # Checkpoint 10 uploaded with its manifest; the lock released; metrics up to the crash kept.
  assert "checkpoint_manifests/10.json" in objects
  assert any(o.startswith("checkpoints/10/") for o in objects)
  assert "run.lock" not in objects and "results.json" not in objects
  steps_before = [json.loads(l)["step"] for l in
                  fileio.read_text(fileio.join(workdir, "metrics.jsonl")).splitlines()]
  assert steps_before[:2] == [5, 10]

  monkeypatch.setattr(data_lib, "train_batches", real)
  assert training.train_and_evaluate(small_config(), workdir) == straight
  # Kept: the newest 3 checkpoints, each with a manifest; nothing staged is left behind.
  objects = _objects("run/")
  assert sorted({o.split("/")[1] for o in objects if o.startswith("checkpoints/")}) == [
      "10", "20", "23"]
  assert [o for o in objects if o.startswith("checkpoint_manifests/")] == [
      f"checkpoint_manifests/{s}.json" for s in (10, 20, 23)]
  assert any(o.startswith("tensorboard/") for o in objects)
  rows = [json.loads(l) for l in fileio.read_text(fileio.join(workdir, "metrics.jsonl")).split(
      "\n") if l]
  # The resumed run appended to the rows written before the crash.
  assert [r["step"] for r in rows][:len(steps_before)] == steps_before
  assert rows[-1] == {"step": 23, "split": "test", **{k: rows[-1][k] for k in rows[-1]
                                                     if k not in ("step", "split")}}
  assert rows[-1]["accuracy"] == straight["accuracy"]
  assert _stages() == stages_before  # local copies removed, after the crash too

  # The restored state is the uninterrupted run's, bit for bit.
  a, b = runs.load_run(straight_dir), runs.load_run(workdir)
  assert a.step == b.step == 23
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(a.state),
                         jax.device_get(b.state))

  # Evaluation writes its report and figures into the bucket.
  evaluation = report.evaluate_workdir(workdir)
  assert evaluation.report["accuracy"] == straight["accuracy"]
  assert {"eval/report.json", "eval/mi_matrix.png", "eval/gate.png",
          "eval/mi_matrix.npy"} <= set(_objects("run/"))

  # A finished run refuses to train again; init_from reads the bucket's newest checkpoint.
  with pytest.raises(CSGError, match="holds a finished run .* launch/evaluate.py"):
    training.train_and_evaluate(small_config(), workdir)
  tree, source = checkpoint_lib.load_pytree(workdir)
  assert source == f"{workdir}/checkpoints/23"
  np.testing.assert_array_equal(tree["gates"]["gate"]["G"],
                                np.asarray(jax.device_get(a.state.gates["gate"]["G"])))


def test_tfds_data_dir_on_s3_is_copied_once_into_the_cache(bucket, tmp_path, capsys):
  """array_record reads local files only: a bucket's prepared data set is read from a copy."""
  pytest.importorskip("tensorflow_datasets")
  from test_data_tfds import _config, _write_pngs  # pylint: disable=g-import-not-at-top
  local = tmp_path / "tfds"
  expected = _write_pngs(local / "downloads" / "manual", {"train": 2, "test": 1})
  data_lib.load_dataset(_config(name="csg_tiny_pngs", data_dir=str(local)))  # prepares locally
  fileio.upload_tree(str(local / "csg_tiny_pngs"), f"{bucket}/tfds/csg_tiny_pngs")

  cfg = _config(name="csg_tiny_pngs", data_dir=f"{bucket}/tfds", download=False,
                cache_dir=str(tmp_path / "cache"))
  for attempt in range(2):
    ds = data_lib.load_dataset(cfg)
    images, labels = ds.splits["train"].read(np.arange(len(ds.splits["train"])))
    assert sorted(zip(images[:, 0, 0, 0].tolist(), labels.tolist())) == sorted(
        (v, label) for v, (split, label) in expected.items() if split == "train")
    copied = "Copying TFDS data set 'csg_tiny_pngs' from s3://" in capsys.readouterr().out
    assert copied == (attempt == 0)  # the second load reuses the copy
  assert len(list((tmp_path / "cache").glob("tfds-*/csg_tiny_pngs/1.0.0/*.array_record*"))) == 2

  with pytest.raises(CSGError, match="'cifar10' is not prepared in data_dir s3://csg-test/tfds: "
                     "prepare it locally"):
    data_lib.load_dataset(_config(name="cifar10", data_dir=f"{bucket}/tfds", download=False,
                                  cache_dir=str(tmp_path / "cache")))
