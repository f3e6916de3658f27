"""PyTorch ResNets imported with csg_jax.torch_import give PyTorch's logits; the launcher's workdir
is a run that load_run and init_from read; bad files are one-line errors.

The golden files in tests/fixtures come from tests/fixtures/make_torch_fixtures.py (random-init
torchvision-layout ResNets at reduced width with randomised BN, their logits computed by PyTorch).
Tests marked by `pytest.importorskip("torch")` also check .pth files against a live torch.
"""

import ast
import functools
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from conftest import REPO, small_config
from csg_jax import models
from csg_jax import torch_import
from csg_jax.errors import CSGError
from csg_jax import runs as run_lib
from csg_jax.runs import state as state_lib

FIXTURES = os.path.join(REPO, "tests", "fixtures")
PLAIN18, PLAIN50 = "resnet18_w8", "resnet50_w4"
AUTHORS = "authors_csg_resnet50_w2"  # module. prefixes, lmask.mask [K, C], 6 classes
ARCH = {PLAIN18: "resnet18", PLAIN50: "resnet50", AUTHORS: "resnet50"}


def _path(name: str) -> str:
  return os.path.join(FIXTURES, f"{name}.safetensors")


@functools.lru_cache(maxsize=None)
def _load(name: str):
  return torch_import.load_resnet(_path(name), ARCH[name])


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, images_nhwc):
  return model.apply(variables, images_nhwc, train=False)["logits"]


def _assert_close(got, want):
  """Within 1e-4 of the logits' scale, the issue's tolerance."""
  scale = np.abs(want).max()
  assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale, (np.abs(got - want).max(), scale)


# Each block type at an even and an odd side (4 compiles): the stride-2 3x3 convs and the
# max-pool only differ from "SAME" padding on even sides.
@pytest.mark.parametrize("name,size", [(PLAIN18, 32), (PLAIN18, 33), (PLAIN50, 32),
                                       (AUTHORS, 33)])
def test_logits_equal_pytorch(name, size):
  model, variables = _load(name)
  golden = np.load(os.path.join(FIXTURES, f"{name}.npz"))
  images = golden[f"images_{size}"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
  _assert_close(_logits(model, variables, images), golden[f"logits_{size}"])


def test_gate_is_lmask_transposed_and_only_where_the_file_has_one():
  model, variables = _load(AUTHORS)
  mask = load_file(_path(AUTHORS))["module.lmask.mask"]
  assert model.gate is not None and mask.shape == (model.num_filters, 6)
  np.testing.assert_array_equal(variables["gates"]["gate"]["G"], mask.T)
  plain, plain_variables = _load(PLAIN18)
  assert plain.gate is None and "gates" not in plain_variables
  # Widths come from conv1; num_batches_tracked counters are in the files and skipped.
  assert (model.backbone.base_width, plain.backbone.base_width) == (2, 8)
  assert any(k.endswith("num_batches_tracked") for k in load_file(_path(PLAIN18)))


def test_bn_and_dense_layouts():
  """BN weight/bias/running stats go to scale/bias/mean/var; fc.weight [C, F] to kernel [F, C]."""
  _, variables = _load(PLAIN18)
  torch_state = load_file(_path(PLAIN18))
  bn = "layer2.0.downsample.1"
  ours = variables["params"]["backbone"]["stage2_block1"]["shortcut_bn"]
  stats = variables["batch_stats"]["backbone"]["stage2_block1"]["shortcut_bn"]
  np.testing.assert_array_equal(ours["scale"], torch_state[f"{bn}.weight"])
  np.testing.assert_array_equal(ours["bias"], torch_state[f"{bn}.bias"])
  np.testing.assert_array_equal(stats["mean"], torch_state[f"{bn}.running_mean"])
  np.testing.assert_array_equal(stats["var"], torch_state[f"{bn}.running_var"])
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"], torch_state["fc.weight"].T)
  np.testing.assert_array_equal(
      variables["params"]["backbone"]["stage1_block2"]["conv2"]["kernel"],
      torch_state["layer1.1.conv2.weight"].transpose(2, 3, 1, 0))


def _edited(tmp_path, name: str, edit) -> str:
  tensors = load_file(_path(name))
  edit(tensors)
  path = str(tmp_path / "edited.safetensors")
  save_file(tensors, path)
  return path


def _pop(key):
  return lambda t: t.pop(key)


def _set(key, value):
  return lambda t: t.__setitem__(key, value)


@pytest.mark.parametrize("name,edit,arch,message", [
    (PLAIN18, _pop("layer3.1.bn2.running_var"), "resnet18",
     r"not a torchvision resnet18: missing key\(s\) layer3.1.bn2.running_var"),
    (PLAIN18, _set("layer9.0.conv1.weight", np.zeros((1,), np.float32)), "resnet18",
     r"unknown key\(s\) layer9.0.conv1.weight"),
    (PLAIN18, _set("layer2.0.conv1.weight", np.zeros((16, 8, 1, 1), np.float32)), "resnet18",
     r"layer2.0.conv1.weight has shape \(16, 8, 1, 1\) but resnet18 at width 8 needs "
     r"\(16, 8, 3, 3\)"),
    (PLAIN50, lambda t: None, "resnet18", r"unknown key.*its keys are those of a resnet50"),
    (AUTHORS, _set("module.lmask.mask", np.zeros((64, 5), np.float32)), "resnet50",
     r"the gate lmask.mask has shape \(64, 5\) but the head fc.weight \(6, 64\) needs "
     r"\[K, C\] = \(64, 6\)"),
    (PLAIN18, _pop("conv1.weight"), "resnet18", "conv1.weight is missing"),
])
def test_bad_state_dict_names_the_key(tmp_path, name, edit, arch, message):
  with pytest.raises(CSGError, match=message) as error:
    torch_import.load_resnet(_edited(tmp_path, name, edit), arch)
  assert "\n" not in str(error.value)


def test_class_count_and_model_name_are_checked():
  with pytest.raises(CSGError, match=r"fc.weight has shape \(6, 64\), a 6-class head, but 10"):
    torch_import.load_resnet(_path(AUTHORS), "resnet50", num_classes=10)
  with pytest.raises(CSGError, match="'resnet20' is not a torchvision architecture"):
    torch_import.load_resnet(_path(PLAIN18), "resnet20")


def _truncated(tmp_path):
  data = open(_path(PLAIN18), "rb").read()
  (tmp_path / "f").write_bytes(data[:len(data) // 2])


def _random_bytes(tmp_path):
  (tmp_path / "f").write_bytes(np.random.default_rng(0).bytes(4096))


def _foreign_pickle(tmp_path):
  """A pickle that would run code: weights_only refuses it (without torch: torch is needed)."""
  (tmp_path / "f").write_bytes(pickle.dumps(subprocess.CompletedProcess(["x"], 0), protocol=2))


def _truncated_zip(tmp_path):
  (tmp_path / "f").write_bytes(b"PK\x03\x04" + bytes(60))


@pytest.mark.parametrize("write,message", [
    (_truncated, "looks like a .safetensors file but cannot be read"),
    (_random_bytes, "is not a .safetensors file or a PyTorch state dict"),
    (_foreign_pickle, "PyTorch checkpoint"),
    (_truncated_zip, "PyTorch checkpoint"),
])
def test_unreadable_file_is_one_line(tmp_path, write, message):
  write(tmp_path)
  with pytest.raises(CSGError, match=message) as error:
    torch_import.load_resnet(str(tmp_path / "f"), "resnet18")
  assert "\n" not in str(error.value)


def _import(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "import_torch.py"), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def _six_class_folder(root) -> None:
  """VOC-Part-like class folders (6 classes) of tiny RGB images, one per class and split."""
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in ("bird", "cat", "cow", "dog", "horse", "sheep"):
      os.makedirs(root / split / c)
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(root / split / c / "a.png")


@pytest.mark.slow
def test_launcher_writes_a_run_that_load_run_and_init_from_read(tmp_path):
  _six_class_folder(tmp_path / "voc")
  workdir = str(tmp_path / "authors")
  proc = _import(f"--weights={_path(AUTHORS)}", f"--workdir={workdir}",
                 "--config=configs/voc_part_resnet152.py", "--config.model.name=resnet50",
                 f"--config.data.path={tmp_path / 'voc'}", "--config.data.image_size=16",
                 f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.decode_workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "imported" in proc.stdout and "csg resnet50 (width 2" in proc.stdout

  # Evaluation's entry point: the config of the authors' procedure, their weights at step 0.
  run = run_lib.load_run(workdir)
  _, variables = _load(AUTHORS)
  assert (run.step, run.config.method, run.config.model.width) == (0, "csg", 2)
  assert run.config.csg.schedule == "alternate" and run.config.model.pytorch_padding
  restored = jax.tree_util.tree_map(np.asarray, run.state.variables())
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored,
                         jax.tree_util.tree_map(np.asarray, variables))

  # init_from into a digits run (1 channel, 10 classes): a new head, the gate left fresh since
  # its shape differs, the RGB stem summed over its input channels.
  config = small_config(init_from=workdir, init_from_skip="^head/")
  config.model.name, config.model.width = "resnet50", 2
  setup = run_lib.build(config)
  loaded = state_lib.load_init_from(workdir, config.init_from_skip, setup.abstract_state())
  params = loaded["params"]
  assert "gates" not in loaded and not any(k.startswith("head/") for k in params)
  stem = np.asarray(variables["params"]["backbone"]["stem_conv"]["kernel"])
  np.testing.assert_allclose(params["backbone/stem_conv/kernel"], stem.sum(2, keepdims=True),
                             rtol=1e-6)
  np.testing.assert_array_equal(params["backbone/stage4_block3/conv3/kernel"],
                                variables["params"]["backbone"]["stage4_block3"]["conv3"]["kernel"])

  with pytest.raises(CSGError, match="already holds a run"):
    run_lib.check_new_workdir(workdir)


@pytest.mark.slow
def test_launcher_bad_file_is_one_line_and_writes_nothing(tmp_path):
  (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
  proc = _import(f"--weights={tmp_path / 'bad.pth'}", f"--workdir={tmp_path / 'w'}",
                 "--config.model.name=resnet18")
  assert proc.returncode != 0
  assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
  assert "is not a .safetensors file or a PyTorch state dict" in proc.stderr
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_launcher_records_what_the_weights_need_and_evaluate_says_it_in_one_line(tmp_path):
  """The default config's data (digits) has 1 channel; the fixture's conv1 (8, 3, 7, 7) takes 3.
  The import warns and records it; evaluation then refuses in one line, reading no array."""
  workdir = str(tmp_path / "w8")
  weights = os.path.relpath(_path(PLAIN18), REPO)
  proc = _import(f"--weights={weights}", f"--workdir={workdir}", "--config.model.name=resnet18")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[0] == (
      f"warning: {weights}'s conv1 takes 3 input channels but this config's data (digits) has 1: "
      f"{workdir} serves as --config.init_from, but evaluating it needs a config whose data has "
      "3 channels")
  assert (f"as std resnet18 (width 8, 3 input channels, 10 classes, K = 64) into {workdir}; "
          "evaluate it on data of 3 channels and 10 classes, or fine-tune from it with "
          f"--config.init_from={workdir} --config.model.name=resnet18 --config.model.width=8 "
          "(and --config.init_from_skip='^head/' for a new head)") in proc.stdout
  with open(os.path.join(workdir, "imported.json")) as f:
    assert json.load(f) == {"weights": weights, "model": "resnet18", "width": 8,
                            "input_channels": 3, "num_classes": 10, "gate": False}

  evaluate = subprocess.run([sys.executable, os.path.join(REPO, "launch", "evaluate.py"),
                             f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
  assert evaluate.returncode == 2
  assert evaluate.stderr.strip().splitlines() == [
      f"error: the checkpoint in {workdir} (step 0) holds a resnet18 at base width 8 with 3 input "
      "channels and 10 classes; its config.json builds one with 1 input channel: the weights "
      f"({weights}) were imported with a config whose data does not fit them; import them again, "
      "into a new --workdir, with a config whose data has 3 channels and 10 classes (the "
      "checkpoint itself is intact)"]
  assert "unusable" not in evaluate.stdout


@pytest.mark.slow
def test_launcher_refuses_another_class_count_and_writes_nothing(tmp_path):
  proc = _import(f"--weights={_path(PLAIN18)}", f"--workdir={tmp_path / 'w'}",
                 "--config.model.name=resnet18", "--config.data.num_classes=6")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: {_path(PLAIN18)}: fc.weight has shape (10, 64), a 10-class head, but 6 classes were "
      "asked for; import it as it is and fine-tune a new head with "
      "--config.init_from_skip='^head/'"]
  assert not os.path.exists(tmp_path / "w")


def _flags_of_commands(text: str, weights: str) -> list[list[str]]:
  """The flags of each import command of `weights` in `text` (continuation lines joined)."""
  commands = re.sub(r"\\\n\s*", " ", text).replace("--config ", "--config=").splitlines()
  return [sorted(t for t in c.split() if t.startswith("--") and not t.startswith("--workdir"))
          for c in commands if f"--weights {weights}" in c]


@pytest.mark.parametrize("weights", ["CSG.pt", "resnet152-394f9c45.pth"])
def test_help_and_docs_import_the_same_way(weights):
  """--help (the module's docstring) imports each file with the flags docs/pretrained.md uses:
  the authors' checkpoints with their released data, whose class order their heads keep."""
  with open(os.path.join(REPO, "docs", "pretrained.md")) as f:
    docs = _flags_of_commands(f.read(), weights)
  with open(os.path.join(REPO, "csg_jax", "cli", "import_torch.py")) as f:
    # Read, not imported: importing would define the command's flags in this process.
    help_text = _flags_of_commands(ast.get_docstring(ast.parse(f.read())), weights)
  assert help_text and docs and all(flags in docs for flags in help_text)
  if weights == "CSG.pt":
    assert "--config.data.source=voc_part_released" in help_text[0]


@pytest.mark.parametrize("padding", [True, False])
def test_pytorch_padding_reaches_imagenet_resnets_only(padding):
  """model.pytorch_padding sets the ImageNet ResNets' padding; the default run's CIFAR ResNet-8
  keeps "SAME" either way."""
  config = small_config()
  config.model.pytorch_padding = padding
  assert models.build_model(config.model, 10).backbone.pytorch_padding is False
  config.model.name = "resnet18"
  assert models.build_model(config.model, 10).backbone.pytorch_padding is padding


def _torch_fixtures():
  """tests/fixtures/make_torch_fixtures.py as a module (its torchvision-layout ResNet)."""
  spec = importlib.util.spec_from_file_location(
      "make_torch_fixtures", os.path.join(FIXTURES, "make_torch_fixtures.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("zipfile", [True, False])  # torch >= 1.6 files, and the authors' torch 1.4
def test_pth_checkpoint_of_the_authors_layout_equals_torch(tmp_path, zipfile):
  torch = pytest.importorskip("torch")
  fixtures = _torch_fixtures()
  net = fixtures.resnet(18, 8, 10, seed=3, gate=True)
  path = str(tmp_path / "CSG.pt")
  # What their train.py saves: a DataParallel state dict among training bookkeeping.
  torch.save({"epoch": 150, "loss": torch.tensor(0.1), "best_acc": 0.9,
              "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
              "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-5}]}},
             path, _use_new_zipfile_serialization=zipfile)
  model, variables = torch_import.load_resnet(path, "resnet18")
  images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    want = net(images).numpy()
  _assert_close(_logits(model, variables, images.numpy().transpose(0, 2, 3, 1)), want)
  np.testing.assert_array_equal(variables["gates"]["gate"]["G"], net.lmask.mask.detach().numpy().T)


def test_pth_plain_and_wrapped_state_dicts_load_and_pickles_are_refused(tmp_path):
  torch = pytest.importorskip("torch")
  state = {k: torch.from_numpy(v.copy()) for k, v in load_file(_path(PLAIN18)).items()}
  _, want = _load(PLAIN18)
  for i, obj in enumerate([state, {"state_dict": state}]):
    torch.save(obj, tmp_path / f"{i}.pth")
    _, got = torch_import.load_resnet(str(tmp_path / f"{i}.pth"), "resnet18")
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  _foreign_pickle(tmp_path)
  with pytest.raises(CSGError, match="looks like a PyTorch checkpoint but cannot be read"):
    torch_import.load_resnet(str(tmp_path / "f"), "resnet18")
  torch.save({"weights": [1, 2]}, tmp_path / "list.pth")
  with pytest.raises(CSGError, match="holds no state dict"):
    torch_import.load_resnet(str(tmp_path / "list.pth"), "resnet18")
