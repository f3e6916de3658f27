"""Config fields: every field is commented, renamed fields are named, old workdirs still load."""

import json
import os
import re

import numpy as np
import pytest

from conftest import REPO
from csg_jax import cli
from csg_jax import config as config_lib
from csg_jax import data
from csg_jax import methods
from csg_jax import runs
from csg_jax.errors import CSGError


def _leaf_names(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaf_names(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def test_every_field_has_a_one_line_comment_and_every_comment_a_field():
  comments = config_lib.comments()
  names = set(_leaf_names(config_lib.base_config().to_dict()))
  for name in names:
    assert comments.get(name, "").strip(), f"{name} has no comment"
    assert "\n" not in comments[name], f"{name}'s comment is not one line"
  assert set(comments) == names  # no comment of a field that is gone
  # --show_config prints them beside the values.
  described = config_lib.describe(config_lib.base_config("folder"))
  assert "csg.gate.target_density = 0.1" in described
  assert re.search(r"data\.skip_corrupt = False +# \(folder\) Skip unreadable", described)


def test_no_field_stutters_its_group():
  for name in _leaf_names(config_lib.base_config().to_dict()):
    *groups, leaf = name.split(".")
    if name == "data.data_dir":
      continue  # TFDS's own name for it
    assert not any(leaf.startswith(g + "_") for g in groups), name


def test_renamed_fields_point_to_existing_fields():
  names = set(_leaf_names(config_lib.base_config().to_dict()))
  for old, new in config_lib.RENAMED.items():
    assert new in names and old not in names, (old, new)


def test_upgrade_moves_every_old_name():
  new = config_lib.base_config().to_dict()
  inverse = {v: k for k, v in config_lib.RENAMED.items()}
  # Fields added after the renaming: an old config has none of them.
  added_later = {"csg.gate.l1_subgradient", "csg.gate.nesterov", "csg.gate.weight_decay",
                 "mis_seed", "std_config", "optimizer.decay_every_parameter"}
  # The same config spelled with the old names, built by hand from the renaming table.
  old = {}
  for name in _leaf_names(new):
    if name in added_later:
      continue
    value = new
    for part in name.split("."):
      value = value[part]
    *parents, leaf = inverse.get(name, name).split(".")
    node = old
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  assert "csg_weight" in old["csg"] and "gate" not in old["csg"]
  upgraded = config_lib.upgrade(old)
  assert set(upgraded["csg"]["gate"]) == set(new["csg"]["gate"]) - {
      n.rsplit(".", 1)[1] for n in added_later if n.startswith("csg.gate.")}
  # complete() adds the later fields at their defaults (the older runs' behaviour), and the
  # mis_seed of ADDED: None, the run's own seed, as runs before it were evaluated.
  completed = config_lib.complete(old)
  assert completed["mis_seed"] is None
  completed["mis_seed"] = new["mis_seed"]
  assert json.dumps(completed, sort_keys=True, default=str) == json.dumps(
      new, sort_keys=True, default=str)


def test_config_json_without_pytorch_padding_keeps_same_padding():
  """Runs written before the field padded "SAME"; they must keep that function when restored."""
  saved = config_lib.base_config().to_dict()
  del saved["model"]["pytorch_padding"]
  assert config_lib.upgrade(saved)["model"]["pytorch_padding"] is False
  assert config_lib.base_config().model.pytorch_padding is True  # new runs pad like PyTorch
  assert "model.pytorch_padding = True" in config_lib.describe(config_lib.base_config())


@pytest.mark.parametrize("name", ["csg.target_density", "target_density"])
def test_renamed_field_message_names_the_new_field(name):
  assert "csg.gate.target_density" in config_lib.renamed_field_message(name)
  assert config_lib.renamed_field_message("csg.no_such_field") == ""


def test_old_field_in_a_config_is_one_line_error():
  config = config_lib.base_config()
  config.csg.csg_weight = 0.5  # what a config file of an earlier version does
  with pytest.raises(CSGError, match=r"config\.csg\.csg_weight was renamed to "
                     r"config\.csg\.gated_loss_weight"):
    config_lib.validate(config)


def test_workdir_of_an_earlier_version_loads(straight_run, tmp_path):
  """A config.json written with the old names restores, its values under the new names."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "old"
  shutil.copytree(straight_run[0], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  csg = saved["csg"]
  gate, alternate = csg.pop("gate"), csg.pop("alternate")
  csg["csg_weight"] = csg.pop("gated_loss_weight")
  csg.update({"gate_" + k if k in ("init", "optimizer", "learning_rate", "momentum") else k: v
              for k, v in gate.items()})
  csg["csg_optimizer"], csg["csg_learning_rate"] = alternate.pop("optimizer"), alternate.pop(
      "learning_rate")
  csg["csg_freeze"] = alternate.pop("freeze")
  csg.update(alternate)
  (workdir / "config.json").write_text(json.dumps(saved))
  run = runs.load_run(str(workdir))
  assert run.step == straight_run[1]["step"]
  assert run.config.csg.gate.target_density == gate["target_density"]
  assert run.config.csg.gated_loss_weight == csg["csg_weight"]


def test_seed_sets_the_initialisation():
  from conftest import small_config  # pylint: disable=g-import-not-at-top
  inits = []
  for seed in (0, 0, 1):
    config = small_config(seed=seed)
    config.model.name = "tiny"  # initialised op by op: a small model keeps this test quick
    setup = runs.build(config)
    state = runs.create_train_state(setup.model, setup.optimizers, (8, 8, 1), setup.rng)
    inits.append(np.asarray(state.params["head"]["kernel"]))
  np.testing.assert_array_equal(inits[0], inits[1])
  assert not np.allclose(inits[0], inits[2])


def _digits_resnet8():
  config = config_lib.base_config("digits")
  config.model.name = "resnet8"
  return config


def test_run_name_lists_the_result_changing_overrides_by_field():
  defaults = _digits_resnet8()
  assert config_lib.run_name(defaults, defaults) == "digits_resnet8_csg"
  config = _digits_resnet8()
  config.method = "std"  # in the stem, not repeated
  config.optimizer.milestones = (0.3, 0.6)
  config.csg.gate.target_density = 0.05
  config.csg.gate.learning_rate = 2.0
  config.optimizer.learning_rate = 0.05
  config.log_every_steps = 7  # bookkeeping: names nothing
  config.data.prefetch = 0
  # Sorted by full field name; `learning_rate` alone would be ambiguous (trunk, gate, alternate).
  assert config_lib.run_name(config, defaults) == (
      "digits_resnet8_std-gate.learning_rate=2.0-target_density=0.05"
      "-optimizer.learning_rate=0.05-milestones=0.3,0.6")
  config = _digits_resnet8()
  config.data.path = "/data/my images"  # no slash or space in a folder name
  assert config_lib.run_name(config, defaults) == "digits_resnet8_csg-path=data_my_images"


def test_run_name_of_many_overrides_is_short_and_stable():
  defaults = _digits_resnet8()
  config = _digits_resnet8()
  for i, field in enumerate(("init", "sparsity_weight", "target_density", "learning_rate",
                             "momentum")):
    config.csg.gate[field] = 0.01 * (i + 1)
  for field in ("learning_rate", "momentum", "weight_decay", "grad_clip_norm"):
    config.optimizer[field] = 0.123456789
  name = config_lib.run_name(config, defaults, max_length=60)
  assert len(name) <= 60 and re.fullmatch(r"digits_resnet8_csg-9_changes-[0-9a-f]{10}", name)
  assert config_lib.run_name(config, defaults, max_length=60) == name
  config.optimizer.momentum = 0.5
  assert config_lib.run_name(config, defaults, max_length=60) != name


def test_result_changes_ignore_bookkeeping_lists_and_old_names():
  before = _digits_resnet8().to_dict()
  after = _digits_resnet8()
  after.keep_checkpoints = 9
  after.eval_every_steps = 3
  after.data.cache_dir = "/elsewhere"
  assert config_lib.result_changes(before, after.to_dict()) == []
  # config.json stores tuples as lists, and an earlier version's names.
  saved = json.loads(json.dumps(before))
  saved["csg"]["csg_weight"] = saved["csg"].pop("gated_loss_weight")
  assert config_lib.result_changes(saved, after.to_dict()) == []
  after.csg.gated_loss_weight = 0.5
  after.data.mean = (0.1,)
  assert config_lib.result_changes(saved, after.to_dict()) == [
      ("csg.gated_loss_weight", 1.0, 0.5), ("data.mean", list(before["data"]["mean"]), (0.1,))]


def test_unread_fields_name_the_setting_that_ignores_them():
  config = _digits_resnet8()
  fields = ["data.name", "data.test_fraction", "csg.gate.target_density",
            "csg.alternate.period", "csg.gated_loss_weight", "optimizer.milestone_epochs",
            "optimizer.warmup_steps", "optimizer.nesterov", "csg.gate.momentum", "seed"]
  # digits, CSG joint, SGD with cosine, gate SGD: a tfds field, a field of the alternate schedule
  # and one of the multistep schedule go unread; the rest are read.
  assert config_lib.unread_fields(config, fields) == [
      ("data.name", "data.source is 'digits'; it is read by tfds"),
      ("csg.alternate.period", "csg.schedule is 'joint'"),
      ("optimizer.milestone_epochs", "optimizer.schedule is 'cosine'")]
  config.method = "std"
  config.data.source = "tfds"
  config.optimizer.update(schedule="multistep", name="adam")
  config.csg.gate.optimizer = "adam"
  assert [f for f, _ in config_lib.unread_fields(config, fields)] == [
      "data.test_fraction", "csg.gate.target_density", "csg.alternate.period",
      "csg.gated_loss_weight", "optimizer.warmup_steps", "optimizer.nesterov",
      "csg.gate.momentum"]


def _config_file(name):
  """configs/<name>.py's get_config(), loaded by path from the checkout's configs/."""
  return config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


def test_shipped_configs_load_by_name_and_by_path_to_the_same_files(tmp_path):
  """configs/ of a checkout is the package's csg_jax/configs (one copy), and `--config` takes a
  shipped config's name as well as a path."""
  assert os.path.realpath(os.path.join(REPO, "configs")) == os.path.realpath(
      config_lib.files.SHIPPED_DIR)
  names = config_lib.shipped()
  assert {"default", "cifar10_resnet20", "shapes", "voc_part_resnet152"} <= set(names)
  assert "__init__" not in names
  for name in ("cifar10_resnet20", "cifar10_resnet20.py", "configs/cifar10_resnet20.py"):
    assert config_lib.resolve(name) in (os.path.join(config_lib.files.SHIPPED_DIR,
                                                     "cifar10_resnet20.py"), name)
    assert config_lib.load_config_file(name).to_dict() == _config_file(
        "cifar10_resnet20").to_dict()
  assert config_lib.resolve("no_such_config") == "no_such_config"  # left for the loader to name
  # --config on the command line: a name becomes the shipped file's path, a path stays.
  shipped = os.path.join(config_lib.files.SHIPPED_DIR, "shapes.py")
  assert cli.resolve_config_names(["prog", "--config", "shapes", "--config.seed=1"]) == [
      "prog", "--config", shipped, "--config.seed=1"]
  assert cli.resolve_config_names(["prog", "--config=shapes.py", "--workdir", "shapes"]) == [
      "prog", f"--config={shipped}", "--workdir", "shapes"]
  mine = str(tmp_path / "mine.py")
  open(mine, "w").write("")
  assert cli.resolve_config_names(["p", "--config", mine]) == ["p", "--config", mine]
  with pytest.raises(CSGError, match=r"--config nope: no such file, and no shipped config of "
                                     r"that name \(shipped: cifar10_resnet20, "):
    cli.resolve_config_names(["p", "--config=nope"])
  with pytest.raises(CSGError, match="does not exist.*name of a shipped one.*default"):
    config_lib.load_config_file("no_such_config")


def test_load_config_file_names_a_missing_file_or_a_file_without_get_config(tmp_path):
  with pytest.raises(CSGError, match="does not exist"):
    config_lib.load_config_file(str(tmp_path / "nothing.py"))
  (tmp_path / "empty.py").write_text("X = 1\n")
  with pytest.raises(CSGError, match="defines no get_config"):
    config_lib.load_config_file(str(tmp_path / "empty.py"))
  # A config that builds on another by path, as configs/cifar10_resnet20_clip.py does.
  (tmp_path / "base.py").write_text(
      "from csg_jax.config import base_config\n"
      "def get_config():\n  c = base_config()\n  c.seed = 7\n  return c\n")
  (tmp_path / "child.py").write_text(
      "import os\nfrom csg_jax.config import load_config_file\n"
      "def get_config():\n"
      "  c = load_config_file(os.path.join(os.path.dirname(__file__), 'base.py'))\n"
      "  c.num_epochs = 2.0\n  return c\n")
  child = config_lib.load_config_file(str(tmp_path / "child.py"))
  assert (child.seed, child.num_epochs) == (7, 2.0)


def test_every_config_file_validates(tmp_path):
  """Every shipped config is valid once its data is where it says; validation checks the data
  fields too, so a config whose source reads data.path names that field without one."""
  names = config_lib.shipped()
  assert {"cifar10_resnet20", "cifar10_resnet20_clip", "cifar10_resnet20_released"} <= set(names)
  for name in names:
    config = _config_file(name)
    if "path" in data.SOURCES[config.data.source].reads:
      config.data.path = None
      with pytest.raises(CSGError, match="data.path"):
        config_lib.validate(config)
      config.data.path = str(tmp_path)
    config_lib.validate(config)
  clip = _config_file("cifar10_resnet20_clip")
  assert clip.csg.gate.projection == "clip" and clip.csg.gate.target_density < 1 / 10


def test_released_cifar_config_alternates_and_decays_as_train_py_would():
  """train.py's `while epoch <= num_epochs` with --epoch 200 runs epochs 0..200: 0-9 STD, then
  e % 3 >= 1 is CSG: 10 + 63 STD epochs (12, 15, ..., 198) and 128 CSG epochs (the last, 200,
  is one). Each MultiStepLR([80, 120, 160]) steps once per epoch of its own phase: STD (lr 0.1)
  never decays; CSG (lr_reg 1.0) after its 80th and 120th epoch. 640 training images of batch
  64: 10 steps an epoch."""
  from csg_jax import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  config = _config_file("cifar10_resnet20_released")
  plan = methods.make_plan(config, 640)
  released_epochs = []
  epoch = 0
  while epoch <= 200:  # train.py line 131, with --epoch 200
    released_epochs.append(epoch)
    epoch += 1
  csg_epochs = [e for e in released_epochs if e >= 10 and e % 3 >= 1]
  assert len(released_epochs) == 201 and len(csg_epochs) == 128 and 200 in csg_epochs
  assert plan.total_steps == 201 * 10
  assert [plan.phase(10 * e) for e in released_epochs] == [
      "csg" if e in csg_epochs else "std" for e in released_epochs]
  rates = optimizer_lib.schedules(config, plan)
  std_steps, csg_steps = 73 * 10, 128 * 10
  assert plan.optimizers["std"].steps == std_steps and plan.optimizers["csg"].steps == csg_steps
  np.testing.assert_allclose([rates["std"]["trunk"](s) for s in (0, std_steps - 1)], [0.1, 0.1],
                             rtol=1e-6)
  for schedule in (rates["csg"]["trunk"], rates["csg"]["gate"]):
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 799, 800, 1199, 1200, csg_steps - 1)],
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  # The released rules of the gate: clip_lmask exactly, torch.norm's subgradient, MIS seed 0.
  assert (config.csg.gate.projection, config.csg.gate.l1_subgradient, config.mis_seed) == (
      "released", "torch", 0)
