"""launch/train.py as a user runs it: overrides work, bad input fails with one clear line."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _train(*args, cwd=None):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "train.py"), *args],
                        capture_output=True, text=True, cwd=cwd or REPO, timeout=300)


def test_overrides_reach_the_run(tmp_path):
  workdir = tmp_path / "w"
  proc = _train(f"--workdir={workdir}", "--config.model.name=tiny", "--config.num_epochs=0.5",
                "--config.method=std", "--config.batch_size=96", "--config.log_every_steps=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["model"] == "tiny" and results["method"] == "std"
  assert results["step"] == 8  # ceil(0.5 * 1437 / 96)
  assert results["gate_density"] is None
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["batch_size"] == 96
  assert "done: std tiny on digits after step 8" in proc.stdout
  assert "img/s" in proc.stdout and "ETA" in proc.stdout


@pytest.mark.parametrize("args,expected", [
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config.batch_size=abc"], "batch_size"),
    (["--config.model.name=resnet21"], "unknown model 'resnet21'"),
    (["--config.data.source=imagenet"], "data.source"),
    (["--config.csg.target_density=1.5"], "csg.target_density"),
    (["--config.batch_size=-5"], "config.batch_size is -5"),
    (["--config", "configs/no_such_config.py"], "no_such_config"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args, expected):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.json").write_text('{"keep": true}')
  proc = _train(f"--workdir={workdir}", *args)
  assert proc.returncode != 0
  assert expected in proc.stderr
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
  assert sorted(os.listdir(workdir)) == ["results.json"]
  assert (workdir / "results.json").read_text() == '{"keep": true}'


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = _train(f"--workdir={blocker / 'sub'}")
  assert proc.returncode == 2
  assert "cannot write to --workdir" in proc.stderr and "Traceback" not in proc.stderr
