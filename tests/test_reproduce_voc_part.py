"""benchmarks/reproduce_voc_part.py end to end on a release-layout fixture with a small ResNet,
and its data step (the released zip unzipped once, safely) on its own."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO
from csg_jax.config import load_config_file
from csg_jax.errors import CSGError
from test_voc_part_released import objects_per_class, write_release

SCRIPT = os.path.join(REPO, "benchmarks", "reproduce_voc_part.py")
# torchvision-layout ResNet-18 at width 8 (tests/fixtures/make_torch_fixtures.py): the fake
# ImageNet weights.
WEIGHTS = os.path.join(REPO, "tests", "fixtures", "resnet18_w8.safetensors")


def _script():
  spec = importlib.util.spec_from_file_location("reproduce_voc_part", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _zipped_release(tmp_path, per_class=2, size=32):
  """The fixture release zipped as the authors' archive is: preprocessed_VOC_Part/processed/...,
  with a part_mask/ folder the source never reads."""
  root = write_release(tmp_path / "preprocessed_VOC_Part", size, *objects_per_class(per_class))
  parts = root / "processed" / f"{size}x{size}" / "part_mask"
  parts.mkdir()
  (parts / "bird-0-2008_000000.HEAD.bmp").write_bytes(b"BM")
  path = tmp_path / "preprocessed_VOC_Part.zip"
  with zipfile.ZipFile(path, "w") as archive:
    for file in sorted(root.rglob("*")):
      archive.write(file, file.relative_to(tmp_path))
  return path, root


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=900)


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_the_zip_is_unzipped_once_without_what_is_not_read(tmp_path):
  script = _script()
  path, original = _zipped_release(tmp_path)
  cache = tmp_path / "cache"
  root = script.prepare_data(str(path), str(cache))
  assert os.path.basename(root) == "preprocessed_VOC_Part"
  assert os.path.dirname(os.path.dirname(root)) == str(cache)
  for sub in ("metadata/train.txt", "metadata/val.txt", "32x32/obj_img", "32x32/obj_mask"):
    assert os.path.exists(os.path.join(root, "processed", sub)), sub
  assert not os.path.exists(os.path.join(root, "processed", "32x32", "part_mask"))
  assert (sorted(os.listdir(os.path.join(root, "processed", "32x32", "obj_img")))
          == sorted(os.listdir(original / "processed" / "32x32" / "obj_img")))
  stamp = os.stat(os.path.join(root, "processed", "metadata", "val.txt")).st_mtime_ns
  assert script.prepare_data(str(path), str(cache)) == root  # reused, not unzipped again
  assert os.stat(os.path.join(root, "processed", "metadata", "val.txt")).st_mtime_ns == stamp
  assert [n for n in os.listdir(cache) if n.startswith(".")] == []  # no half-unzipped copy
  # Named by content: a copy of the archive under another name is the same data.
  (tmp_path / "copy").mkdir()
  shutil.copy(path, tmp_path / "copy" / "download.zip")
  assert script.prepare_data(str(tmp_path / "copy" / "download.zip"), str(cache)) == root
  assert len(os.listdir(cache)) == 1
  # An unzipped folder is read where it is, given as the folder holding processed/ or its parent.
  assert script.prepare_data(str(original), str(cache)) == str(original)
  assert script.prepare_data(str(tmp_path), str(cache)) == str(original)


def test_bad_archives_are_one_line(tmp_path):
  script = _script()
  (tmp_path / "a.zip").write_bytes(b"not a zip")
  with pytest.raises(CSGError, match="neither a folder nor a zip archive"):
    script.prepare_data(str(tmp_path / "a.zip"), str(tmp_path / "cache"))
  with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
    archive.writestr("../processed/metadata/train.txt", "2008_000001\n")
  with pytest.raises(CSGError, match="outside the folder"):
    script.prepare_data(str(tmp_path / "evil.zip"), str(tmp_path / "cache"))
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
    archive.writestr("photos/cat.jpg", "x")
  with pytest.raises(CSGError, match="holds no processed/metadata"):
    script.prepare_data(str(tmp_path / "other.zip"), str(tmp_path / "cache"))
  assert not os.path.exists(tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("change,message", [
    ({"--weights": "{tmp}/absent"}, "--weights {tmp}/absent does not exist"),
    ({"--data": "{tmp}/absent"}, "--data {tmp}/absent does not exist"),
    ({"--set": "nonsense=1"},
     "--set nonsense=1: there is no such field (python launch/train.py --show_config lists them)"),
    ({"--set": "data.name=cifar100"}, "--set data.name is not read by the runs (data.source is "
     "'voc_part_released'; it is read by tfds)"),
    ({"--app": "attacks.pgd_steps=0"}, "attacks.pgd_steps is 0: set it to >= 1"),
], ids=["weights", "data", "set-field", "set-unread", "app-value"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, change, message):
  _, folder = _zipped_release(tmp_path, per_class=1)
  args = {"--weights": WEIGHTS, "--data": str(folder), "--model": "resnet18",
          "--image_size": "32", "--cache_dir": str(tmp_path / "cache"),
          **{k: v.format(tmp=tmp_path) for k, v in change.items()}}
  proc = _run(*(f"{k}={v}" for k, v in args.items()), f"--root={tmp_path / 'root'}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f"error: {message.format(tmp=tmp_path)}"]
  assert not os.path.exists(tmp_path / "root") and not os.path.exists(tmp_path / "cache")


# Small enough for 2 CPU cores: 12 train and 12 test images of 32x32, 3 epochs of batch 4 (epoch 2
# a CSG epoch once the warm-up is 1 epoch), the applications at their smallest (explanations off).
SMALL = ["--model=resnet18", "--epochs=3", "--image_size=32", "--set=batch_size=4",
         "--set=eval_batch_size=8", "--set=csg.alternate.warmup_epochs=1",
         "--app=localization.num_filters=2", "--app=localization.batch_size=8",
         "--app=attacks.attacks=('fgsm',)", "--app=attacks.epsilons=(0.0314,)",
         "--app=attacks.batch_size=8", "--app=num_examples=2",
         "--app=detection.successful_only=False",
         "--app=run_explanations=False"]  # judged in test_explanation_quality.py


@pytest.mark.slow
def test_reproduces_end_to_end_and_reuses_what_is_done(tmp_path):
  path, _ = _zipped_release(tmp_path)
  root = tmp_path / "root"
  args = [f"--weights={WEIGHTS}", f"--data={path}", f"--root={root}",
          f"--cache_dir={tmp_path / 'cache'}", *SMALL]
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])

  # The ImageNet import, as csg-import-torch writes it.
  assert _read(root / "imagenet" / "imported.json") == {
      "weights": WEIGHTS, "model": "resnet18", "width": 8, "input_channels": 3,
      "num_classes": 10, "gate": False}
  # Each run trained with its config: the STD run with voc_part_resnet152_std's settings.
  std_file, csg_file = load_config_file("voc_part_resnet152_std"), load_config_file(
      "voc_part_resnet152")
  configs = {m: _read(root / m / "config.json") for m in ("std", "csg")}
  assert configs["std"]["method"] == "std" and configs["csg"]["method"] == "csg"
  assert configs["std"]["optimizer"]["freeze"] == std_file.optimizer.freeze
  assert configs["csg"]["optimizer"]["freeze"] == csg_file.optimizer.freeze
  assert std_file.optimizer.freeze != csg_file.optimizer.freeze
  assert configs["csg"]["csg"]["schedule"] == "alternate"
  for config in configs.values():
    assert config["init_from"] == str(root / "imagenet")
    assert (config["model"]["name"], config["model"]["width"]) == ("resnet18", 8)
    assert config["data"]["source"] == "voc_part_released"
    assert config["num_epochs"] == 3.0 and config["batch_size"] == 4
  assert _read(root / "csg" / "results.json")["step"] == 9  # 3 epochs of 12 images, batch 4

  # The report: both rows, equal to each run's evaluation report; the paper's cells say plainly
  # that its VOC Part numbers are not known to us.
  text = (root / "reproduce_voc_part.md").read_text()
  assert summary == _read(root / "reproduce_voc_part.json")
  for method in ("std", "csg"):
    report = _read(root / method / "eval" / "report.json")
    row = summary["results"][method]
    assert (row["accuracy"], row["mis"], row["step"]) == (report["accuracy"], report["mis"], 9)
    assert (f"| {method.upper()} | {row['accuracy']:.4f} | {row['mis']:.4f} | "
            in text)
  assert summary["results"]["std"]["gate_density"] is None
  assert 0 < summary["results"]["csg"]["gate_density"] <= 1
  assert "| STD |" in text and "| CSG |" in text and "not known to us" in text
  assert (root / "compare.md").is_file() and (root / "compare.png").is_file()

  # The applications: per run and side by side, localization on the released masks.
  for method in ("std", "csg"):
    applications = _read(root / method / "eval" / "applications.json")
    assert set(applications["localization"]) >= {"gradmap", "cam", "activmap"}
    assert [r["attack"] for r in applications["adversarial"]] == ["fgsm"]
  for name in ("applications_std_vs_csg.md", "applications_std_vs_csg.json",
               "localization_std_vs_csg.png", "roc_std_vs_csg.png"):
    assert (root / "applications" / name).is_file(), name
  assert set(summary["localization"]) == {"gradmap", "cam", "activmap"}
  assert [r["attack"] for r in summary["adversarial"]] == ["fgsm"]
  assert "## Localization" in text and "## Adversarial" in text

  # A rerun reuses the import, the unzipped data, both runs and the applications.
  again = _run(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  for line in ("[1/5] data: reusing", "[2/5] reusing", "STD run in", "CSG run in",
               "[4/5] reusing the applications"):
    assert line in again.stdout, line
  assert again.stdout.count("finished before, evaluating it") == 2
  rerun = json.loads(again.stdout.strip().splitlines()[-1])
  assert rerun["results"] == summary["results"]
  assert rerun["localization"] == summary["localization"]
