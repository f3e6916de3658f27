"""Everything a run is built from, derived once from its config: the data set, the model, the
plan, the optimisers, the device mesh. Used to start a run and to restore a finished one."""

import dataclasses
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import optax

from csg_jax import config as config_lib
from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax.errors import CSGError
from csg_jax.plan import Plan
from csg_jax.training import checkpoint as checkpoint_lib
from csg_jax.training import parallel
from csg_jax.training import state as state_lib


@dataclasses.dataclass
class RunSetup:
  config: Any
  mesh: Any
  dataset: data_lib.Dataset
  model: models.CSGClassifier
  plan: Plan
  optimizers: Dict[str, optax.GradientTransformation]

  @property
  def rng(self) -> jax.Array:
    return jax.random.PRNGKey(self.config.seed)

  def abstract_state(self) -> state_lib.TrainState:
    return state_lib.abstract_state(self.model, self.optimizers, self.dataset.image_shape,
                                    self.rng, parallel.replicated(self.mesh))


def build(config, *, devices: Optional[Sequence[jax.Device]] = None) -> RunSetup:
  """Data set, model, plan and optimisers of `config` on a mesh of `devices` (default: all)."""
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  dataset = data_lib.load_dataset(config.data, seed=config.seed)
  if not len(config.data.mean):  # every reader of config.data sees the statistics in use
    config = config.copy_and_resolve_references()
    config.unlock()
    config.data.mean, config.data.std = dataset.statistics
  model = models.build_model(config.model, dataset.num_classes, use_gate=config.method == "csg",
                             gate_init=config.csg.gate.init)
  plan = Plan.from_config(config, len(dataset.splits["train"]))
  return RunSetup(config, mesh, dataset, model, plan,
                  optimizer_lib.make_optimizers(config, plan))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (fields renamed since then under their new names)."""
  path = fileio.join(workdir, "config.json")
  if not fileio.exists(path):
    raise CSGError(f"{workdir!r} holds no config.json: is it a csg_jax workdir? "
                   "(train one with launch/train.py --workdir ...)")
  return ml_collections.ConfigDict(config_lib.upgrade(fileio.read_json(path)))


@dataclasses.dataclass
class TrainedRun:
  """A finished (or interrupted) run restored from its workdir, ready for evaluation."""
  setup: RunSetup
  state: state_lib.TrainState
  step: int

  # The parts most callers need, by name.
  config = property(lambda self: self.setup.config)
  dataset = property(lambda self: self.setup.dataset)
  model = property(lambda self: self.setup.model)
  mesh = property(lambda self: self.setup.mesh)


def load_run(workdir: str, *, devices: Optional[Sequence[jax.Device]] = None) -> TrainedRun:
  """Restores the newest good checkpoint of `workdir` with the config the run was trained with,
  normalising with the statistics the run trained with (dataset.json), not measured again."""
  config = read_config(workdir)
  recorded = fileio.join(workdir, "dataset.json")
  if not len(config.data.mean) and fileio.exists(recorded):
    used = fileio.read_json(recorded)
    if used.get("mean") and used.get("std"):  # read_config's ConfigDict is not locked
      config.data.mean, config.data.std = tuple(used["mean"]), tuple(used["std"])
  setup = build(config, devices=devices)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=setup.config.keep_checkpoints)
  try:
    state, step = checkpointer.restore_latest(setup.abstract_state())
  finally:
    checkpointer.close()
  if state is None:
    raise CSGError(f"{workdir!r} holds no checkpoint yet; train it first with launch/train.py")
  return TrainedRun(setup, state, step)


def check_new_workdir(workdir: str) -> None:
  """Refuses a workdir that already holds a run, before any work is done for a new one."""
  if fileio.exists(fileio.join(workdir, "config.json")) or fileio.listdir(
      fileio.join(workdir, "checkpoints")):
    raise CSGError(f"{workdir!r} already holds a run (config.json or checkpoints); choose a new "
                   "--workdir, or remove that one")


def save_as_run(config, variables: Dict[str, Any], workdir: str) -> None:
  """Writes `variables` (imported weights) as step 0 of a run of `config` in a new `workdir`:
  config.json and a checkpoint of the whole train state with fresh optimiser states, which
  load_run, evaluation and init_from then read like those of any run.

  Needs no data: the optimiser states' structure depends on the config only, not on the data
  set's size, so the plan is laid out for a nominal epoch of one batch.
  """
  check_new_workdir(workdir)
  optimizers = optimizer_lib.make_optimizers(config, Plan.from_config(config, config.batch_size))
  state = state_lib.state_from_variables(variables, optimizers)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=config.keep_checkpoints)
  try:
    checkpointer.maybe_save(0, state, force=True)
  finally:
    checkpointer.close()
  # Last: a workdir with config.json is complete.
  fileio.write_json_atomic(fileio.join(workdir, "config.json"), config.to_dict())
