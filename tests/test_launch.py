"""The commands as a user runs them (launch/<command>.py shims and csg-<command> console scripts):
overrides work, --help answers, bad input fails with one clear line."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from csg_jax import cli
from csg_jax.errors import CSGError

pytestmark = pytest.mark.slow  # starts other processes


COMMANDS = ("train", "evaluate", "compare", "applications", "build_shapes", "build_voc_part",
            "import_torch", "prepare_tfds", "explain", "compile")


def _run(argv, cwd=None):
  return subprocess.run(argv, capture_output=True, text=True, cwd=cwd or REPO, timeout=300)


def _train(*args, cwd=None):
  return _run([sys.executable, os.path.join(REPO, "launch", "train.py"), *args], cwd=cwd)


def _shim(command):
  return [sys.executable, os.path.join(REPO, "launch", f"{command}.py")]


def _console_script(command):
  """The installed csg-<command> entry point, next to this interpreter."""
  path = os.path.join(os.path.dirname(sys.executable), f"csg-{command.replace('_', '-')}")
  if not os.path.exists(path):
    pytest.fail(f"{path} is missing: reinstall csg_jax (pip install -e .) for its console scripts")
  return [path]


def test_overrides_reach_the_run_and_name_its_workdir(tmp_path):
  args = ["--config.model.name=tiny", "--config.num_epochs=0.5", "--config.method=std",
          "--config.batch_size=96", "--config.log_every_steps=2"]
  proc = _train(*args, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Stem from data, model and method; then the result-changing overrides, sorted by field
  # (log_every_steps changes no result and names nothing).
  workdir = tmp_path / "workdirs" / "digits_tiny_std-batch_size=96-num_epochs=0.5"
  assert os.listdir(tmp_path / "workdirs") == [workdir.name]
  results = json.loads((workdir / "results.json").read_text())
  assert results["model"] == "tiny" and results["method"] == "std"
  assert results["step"] == 8  # ceil(0.5 * 1437 / 96)
  assert results["gate_density"] is None
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["batch_size"] == 96
  assert "done: std tiny on digits after step 8" in proc.stdout
  assert "img/s" in proc.stdout and "ETA" in proc.stdout

  # The same command again: the run is finished, so it refuses and touches nothing.
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  again = _train(*args, cwd=tmp_path)
  assert again.returncode == 2
  assert again.stderr.strip().splitlines() == [
      f"error: {os.path.join('workdirs', workdir.name)} holds a finished run (step 8: accuracy "
      f"{results['accuracy']:.4f}, MIS {results['mis']:.4f}); evaluate it with `python "
      f"launch/evaluate.py --workdir {os.path.join('workdirs', workdir.name)}`, or train again "
      f"in another --workdir (or delete {os.path.join('workdirs', workdir.name)})"]
  # Into the same workdir with a changed field: refused, naming the field.
  changed = _train(*args, f"--workdir={workdir}", "--config.seed=3", cwd=tmp_path)
  assert changed.returncode == 2
  assert f"{workdir} holds a run of another config (seed 0 -> 3); train in another --workdir" \
      in changed.stderr
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.parametrize("args,expected", [
    (["--config.no_such_field=1"], "no config field named 'no_such_field' (check the "
                                   "--config.<field> overrides; --show_config lists every field"),
    (["--config.batch_size=abc"], "batch_size"),
    (["--config.model.name=resnet21"], "unknown model 'resnet21'"),
    (["--config.data.source=imagenet"], "data.source"),
    (["--config.csg.target_density=1.5"], "csg.target_density"),
    (["--config.csg.gate.target_density=1.5"], "config.csg.gate.target_density is 1.5"),
    (["--config.csg.gate.target_densty=0.1"],
     "no config field named 'csg.gate.target_densty'; did you mean \"target_density\""),
    (["unexpected"], "unexpected arguments: unexpected"),
    (["--config.batch_size=-5"], "config.batch_size is -5"),
    (["--config.data.name=cifar100"],
     "--config.data.name is not read by this run (data.source is 'digits'; it is read by tfds)"),
    (["--config", "configs/no_such_config.py"], "no_such_config"),
    (["--config", "no_such_name"], "--config no_such_name: no such file, and no shipped config "
                                   "of that name (shipped: cifar10_resnet20, "),
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


def test_compare_seeds_flag_values():
  assert cli.parse_seeds("") is None
  assert cli.parse_seeds("0, 1,2") == (0, 1, 2)
  for bad in ("0,x", "1,1", "-1", "0,,2"):
    with pytest.raises(CSGError, match=f"--seeds is '{bad}': give distinct non-negative"):
      cli.parse_seeds(bad)


def test_compare_methods_flag_values():
  assert cli.parse_methods("std,csg,picnn") == ("std", "csg", "picnn")
  assert cli.parse_methods(" picnn , csg") == ("picnn", "csg")
  for bad in ("std", "std,std", "std,gates", ""):
    with pytest.raises(CSGError, match=f"--methods is '{bad}': give two or more distinct "
                                       "methods separated by commas, from std, csg, picnn"):
      cli.parse_methods(bad)


def test_compare_refuses_an_override_none_of_its_methods_reads(tmp_path):
  proc = _run([*_shim("compare"), "--methods=std,csg", "--config.picnn.interpretation_weight=1",
               f"--workdir={tmp_path / 'w'}"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --config.picnn.interpretation_weight is not read by this run (method is 'std'): "
      "remove it, or set the field that makes the run read it"]
  assert not (tmp_path / "w").exists()


def test_compare_trains_the_configs_std_baseline_with_the_same_overrides(tmp_path):
  """A config naming its STD baseline (config.std_config, as voc_part_resnet152 does): the STD
  run is that config with the command's overrides, the CSG run this one; compare.md names both.
  Unit-level: the shipped VOC config's STD run is the released baseline (stage 2 trains)."""
  from csg_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  from csg_jax.experiments import compare  # pylint: disable=g-import-not-at-top
  voc = load_config_file("voc_part_resnet152")
  std = compare.std_baseline(voc, {"data.path": "/data/voc_part", "seed": 3})
  released = load_config_file("voc_part_resnet152_std")
  assert std.method == "std" and std.optimizer.freeze == released.optimizer.freeze
  assert voc.optimizer.freeze != released.optimizer.freeze
  assert (std.data.path, std.seed) == ("/data/voc_part", 3)

  base = ("from csg_jax.config import base_config\n"
          "def get_config():\n"
          "  c = base_config('digits')\n"
          "  c.model.name, c.model.width, c.batch_size, c.num_epochs = 'tiny', 4, 64, 0.2\n"
          "  c.tensorboard_images = False\n")
  (tmp_path / "mine.py").write_text(base + f"  c.std_config = {str(tmp_path / 'mine_std.py')!r}\n"
                                    "  return c\n")
  (tmp_path / "mine_std.py").write_text(base + "  c.optimizer.learning_rate = 0.05\n"
                                        "  return c\n")
  root = tmp_path / "cmp"
  proc = _run([*_shim("compare"), f"--config={tmp_path / 'mine.py'}", "--config.seed=2",
               f"--workdir={root}"])
  assert proc.returncode == 0, proc.stderr
  std_run = json.loads((root / "std" / "config.json").read_text())
  csg_run = json.loads((root / "csg" / "config.json").read_text())
  assert (std_run["method"], std_run["optimizer"]["learning_rate"], std_run["seed"]) == (
      "std", 0.05, 2)
  assert (csg_run["method"], csg_run["optimizer"]["learning_rate"], csg_run["seed"]) == (
      "csg", 0.1, 2)
  text = (root / "compare.md").read_text()
  assert "Configs: STD: mine_std.py (its std_config), the same overrides; CSG: mine.py, " \
         "seed=2, method=csg." in text
  assert str(tmp_path) not in text  # workdirs relative to compare.md's folder


def test_compare_bad_seeds_is_one_line_and_writes_nothing(tmp_path):
  proc = _run([*_shim("compare"), "--seeds=0,x", f"--workdir={tmp_path / 'w'}"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --seeds is '0,x': give distinct non-negative integers separated by commas, e.g. "
      "--seeds 0,1,2"]
  assert not (tmp_path / "w").exists()


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = _train(f"--workdir={blocker / 'sub'}")
  assert proc.returncode == 2
  assert "cannot write to --workdir" in proc.stderr and "Traceback" not in proc.stderr



@pytest.mark.parametrize("launcher", [_shim, _console_script], ids=["shim", "console_script"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_and_lists_the_command_flags(tmp_path, command, launcher):
  proc = _run([*launcher(command), "--help"], cwd=tmp_path)  # configs/ found from anywhere
  assert proc.returncode == 0, proc.stderr[-3000:]
  flag = {"build_voc_part": "--voc_root", "build_shapes": "--root",
          "applications": "--std_workdir", "prepare_tfds": "--name",
          "compile": "--topology"}.get(command, "--workdir")
  assert flag in proc.stdout
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("launcher,command", [(_shim, "train"), (_console_script, "train"),
                                              (_console_script, "compare")],
                         ids=["shim", "csg-train", "csg-compare"])
def test_renamed_field_is_one_line_naming_the_new_field(tmp_path, launcher, command):
  proc = _run([*launcher(command), "--config.csg.target_density=0.05",
               f"--workdir={tmp_path / 'w'}"], cwd=tmp_path)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "csg.gate.target_density" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_show_config_lists_every_field_with_its_comment_and_trains_nothing(tmp_path):
  proc = _run([*_shim("train"), "--show_config", "--config.csg.gate.target_density=0.05",
               f"--workdir={tmp_path / 'w'}"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  density = [l for l in lines if l.startswith("csg.gate.target_density = ")]
  assert density and "0.05" in density[0] and "# d: the hinge is zero" in density[0]
  assert all("  # " in l for l in lines), [l for l in lines if "  # " not in l]
  assert len(lines) > 50
  assert not os.path.exists(tmp_path / "w") and not os.path.exists(tmp_path / "workdirs")


def test_bad_config_leaves_no_new_workdir(tmp_path):
  workdir = tmp_path / "new" / "run"
  proc = _train(f"--workdir={workdir}", "--config.batch_size=-5")
  assert proc.returncode == 2 and "config.batch_size is -5" in proc.stderr
  assert not os.path.exists(tmp_path / "new")  # checked before the workdir is created
