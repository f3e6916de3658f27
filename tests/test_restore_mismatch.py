"""A sound checkpoint whose shapes the config does not build: restoring (load_run, a resume) and
init_from say in one line which config field explains the shapes, before orbax reads an array,
and never call the checkpoint unusable; a damaged one still is.

The checkpoint is the ResNet-18 fixture imported at base width 8: its conv1.weight (8, 3, 7, 7)
and fc.weight (10, 64) make it 3 input channels, width 8 and 10 classes (checked from the file).
"""

import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import REPO, small_config
from csg_jax import runs
from csg_jax import torch_import
from csg_jax import training
from csg_jax.errors import CSGError
from csg_jax.runs import checkpoint as checkpoint_lib
from csg_jax.runs import state as state_lib

WEIGHTS = os.path.join(REPO, "tests", "fixtures", "resnet18_w8.safetensors")
HOLDS = "holds a resnet18 at base width 8 with 3 input channels and 10 classes"


def _config(**model):
  """The digits config with the fixture's architecture (model fields overridable); std, as the
  launcher sets it for a file without a gate."""
  config = small_config(method="std")
  config.model.update({"name": "resnet18", "width": 8, **model})
  return config


def _abstract(config, *, channels: int = 3, classes: int = 10):
  setup = runs.for_shapes(config, num_classes=classes, image_shape=(16, 16, channels),
                          num_train_examples=64)
  return setup.abstract_state()


def _files(workdir) -> dict[str, int]:
  return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
          for root, _, names in os.walk(workdir) for f in names}


def _import(workdir, weights=WEIGHTS, **model):
  """The launcher's steps: the file's weights as step 0 of a run of `_config`, with its record."""
  model_def, variables = torch_import.load_resnet(weights, "resnet18")
  stem = variables["params"]["backbone"]["stem_conv"]["kernel"]
  runs.save_as_run(_config(**model), variables, str(workdir), record={
      "weights": "resnet18_w8.safetensors", "model": "resnet18", "width": 8,
      "input_channels": stem.shape[2], "num_classes": model_def.num_classes, "gate": False})
  return variables


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("imported") / "w8"
  return str(workdir), _import(workdir)


def test_the_fixture_is_what_the_messages_say():
  tensors = load_file(WEIGHTS)
  assert tensors["conv1.weight"].shape == (8, 3, 7, 7)  # width 8 from 3 channels
  assert tensors["fc.weight"].shape == (10, 64)  # 10 classes, K = 8 * 8


@pytest.mark.parametrize("model,channels,classes,differs,fix", [
    ({}, 1, 10, "one with 1 input channel", "use data with 3 channels"),
    (dict(width=0), 1, 10, "one with base width 64 and 1 input channel",
     "set --config.model.width=8 and use data with 3 channels"),
    (dict(name="resnet34"), 3, 10, "a resnet34", "set --config.model.name=resnet18"),
    ({}, 3, 6, "one with 6 classes", "use data with 10 classes"),
    (dict(name="resnet50", width=0), 3, 6, "a resnet50 with base width 64 and 6 classes",
     "set --config.model.name=resnet18, set --config.model.width=8 and use data with 10 "
     "classes"),
])
def test_restore_names_the_config_field_and_reads_nothing(imported, capsys, model, channels,
                                                          classes, differs, fix):
  workdir, _ = imported
  before = _files(workdir)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0, keep=2)
  try:
    with pytest.raises(checkpoint_lib.ShapeMismatch) as error:
      checkpointer.restore_latest(_abstract(_config(**model), channels=channels,
                                            classes=classes))
  finally:
    checkpointer.close()
  assert str(error.value) == (f"the checkpoint in {workdir} (step 0) {HOLDS}; this config "
                              f"builds {differs}: {fix} (the checkpoint itself is intact)")
  assert "unusable" not in capsys.readouterr().out
  assert _files(workdir) == before


def _with_an_odd_bn_scale(abstract):
  """`abstract` with one batch-norm scale of 17 entries: a shape no config field explains."""
  params = jax.tree_util.tree_map(lambda x: x, abstract.params)
  params["backbone"]["stage2_block1"]["bn1"]["scale"] = jax.ShapeDtypeStruct((17,), np.float32)
  return abstract.replace(params=params)


def test_restore_names_the_method_for_a_gate(imported):
  workdir, _ = imported
  config = _config()
  config.method = "csg"
  with pytest.raises(CSGError) as error:
    checkpoint_lib.Checkpointer(workdir, every_steps=0, keep=2).restore_latest(_abstract(config))
  assert str(error.value).endswith("this config builds one with a gate: set --config.method=std "
                                   "(the checkpoint itself is intact)")


def test_restore_lists_shapes_no_config_field_explains(imported):
  """One batch-norm scale of another size: no field explains it, so the array is named."""
  workdir, _ = imported
  with pytest.raises(CSGError) as error:
    checkpoint_lib.Checkpointer(workdir, every_steps=0, keep=2).restore_latest(
        _with_an_odd_bn_scale(_abstract(_config())))
  assert str(error.value) == (
      f"the checkpoint in {workdir} (step 0) holds other shapes than this config builds: "
      "params/backbone/stage2_block1/bn1/scale: checkpoint (16,) vs config (17,): restore it "
      "with the config (and csg_jax version) it was written with (the checkpoint itself is "
      "intact)")


def test_fitting_config_restores_the_weights(imported):
  workdir, variables = imported
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0, keep=2)
  try:
    state, step = checkpointer.restore_latest(_abstract(_config()))
  finally:
    checkpointer.close()
  assert step == 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.variables()),
                         jax.device_get(variables))


def test_load_run_of_an_import_whose_data_does_not_fit_says_import_again(imported, capsys):
  """load_run reads config.json (digits: 1 channel) and the import's record."""
  workdir, _ = imported
  before = _files(workdir)
  with pytest.raises(CSGError) as error:
    runs.load_run(workdir)
  assert str(error.value) == (
      f"the checkpoint in {workdir} (step 0) {HOLDS}; its config.json builds one with 1 input "
      "channel: the weights (resnet18_w8.safetensors) were imported with a config whose data "
      "does not fit them; import them again, into a new --workdir, with a config whose data "
      "has 3 channels and 10 classes (the checkpoint itself is intact)")
  assert "unusable" not in capsys.readouterr().out
  assert _files(workdir) == before


def test_resume_with_data_that_does_not_fit_names_the_channels(imported, capsys):
  """Training in the imported workdir with its own config is a resume; the data has 1 channel."""
  workdir, _ = imported
  before = _files(workdir)
  with pytest.raises(CSGError) as error:
    training.train_and_evaluate(runs.read_config(workdir), workdir)
  assert str(error.value) == (
      f"the checkpoint in {workdir} (step 0) {HOLDS}; this config builds one with 1 input "
      "channel: use data with 3 channels (the checkpoint itself is intact)")
  assert "unusable" not in capsys.readouterr().out
  assert _files(workdir) == before


def test_a_damaged_checkpoint_is_still_unusable(tmp_path, capsys):
  """Unreadable metadata and no manifest to catch it: orbax fails, and the old advice stays."""
  workdir = tmp_path / "damaged"
  _import(workdir)
  os.remove(workdir / "checkpoint_manifests" / "0.json")
  (workdir / "checkpoints" / "0" / "default" / "_METADATA").write_bytes(b"{not json")
  with pytest.raises(CSGError, match=r"none of the 1 checkpoints .* could be restored .*"
                                     r"Refusing to restart from step 0 over them: use a new "
                                     r"--workdir, or move the damaged checkpoints away"):
    checkpoint_lib.Checkpointer(str(workdir), every_steps=0, keep=2).restore_latest(
        _abstract(_config()))
  assert "checkpoint at step 0 is unusable" in capsys.readouterr().out


def _init_from(workdir, skip, config, **shapes):
  return state_lib.load_init_from(workdir, skip, _abstract(config, **shapes))


def _backbone_arrays() -> int:
  """The fixture's backbone arrays (all but fc and BN's counters): all depend on the width."""
  return sum(1 for k in load_file(WEIGHTS)
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))


def test_init_from_at_another_width_names_model_width(imported):
  workdir, _ = imported
  with pytest.raises(CSGError) as error:
    _init_from(workdir, "^head/", _config(width=0), channels=1)
  assert str(error.value) == (
      f"config.init_from={workdir!r} {HOLDS}; this config builds one with base width 64 "
      f"({_backbone_arrays()} parameters differ, e.g. params/backbone/stage1_block1/conv1/"
      "kernel: checkpoint (3, 3, 8, 8) vs model (3, 3, 64, 64)): set --config.model.width=8")
  # The fix works: at width 8 everything but the head loads, the RGB stem summed for 1 channel.
  loaded = _init_from(workdir, "^head/", _config(), channels=1)
  assert sum(len(v) for v in loaded.values()) == _backbone_arrays()


def test_init_from_with_other_classes_or_layers_names_the_head_or_model_name(imported):
  workdir, _ = imported
  with pytest.raises(CSGError) as error:
    _init_from(workdir, "", _config(), classes=6)
  assert str(error.value) == (
      f"config.init_from={workdir!r} {HOLDS}; this config builds one with 6 classes "
      "(2 parameters differ, e.g. params/head/kernel: checkpoint (64, 10) vs model (64, 6)): "
      "leave the head fresh with --config.init_from_skip='^head/'")
  with pytest.raises(CSGError) as error:
    _init_from(workdir, "^head/", _config(name="resnet34"))
  message = str(error.value)
  assert message.startswith(f"config.init_from={workdir!r} {HOLDS}; this config builds a "
                            "resnet34 (")
  assert message.endswith("is missing from the checkpoint): set --config.model.name=resnet18")


def test_init_from_a_gray_stem_into_colour_data_names_the_stem(tmp_path):
  tensors = load_file(WEIGHTS)
  tensors["conv1.weight"] = tensors["conv1.weight"][:, :1].copy()  # a 1-channel stem
  save_file(tensors, str(tmp_path / "gray.safetensors"))
  workdir = str(tmp_path / "gray")
  _import(workdir, weights=str(tmp_path / "gray.safetensors"))
  with pytest.raises(CSGError) as error:
    _init_from(workdir, "^head/", _config(), channels=3)
  assert str(error.value) == (
      f"config.init_from={workdir!r} holds a resnet18 at base width 8 with 1 input channel and "
      "10 classes; this config builds one with 3 input channels (1 parameter differs, e.g. "
      "params/backbone/stem_conv/kernel: checkpoint (7, 7, 1, 8) vs model (7, 7, 3, 8)): leave "
      "the stem fresh with --config.init_from_skip='^head/|^backbone/stem_conv/'")


def test_init_from_lists_shapes_no_config_field_explains(imported):
  workdir, _ = imported
  with pytest.raises(CSGError) as error:
    state_lib.load_init_from(workdir, "", _with_an_odd_bn_scale(_abstract(_config())))
  assert str(error.value) == (
      f"config.init_from={workdir!r} does not fit this model (1 parameter differs): "
      "params/backbone/stage2_block1/bn1/scale: checkpoint (16,) vs model (17,). Skip them with "
      "--config.init_from_skip=<regex>, e.g. '^head/' for a new class count.")
