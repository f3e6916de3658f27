"""Everything a run is built from, derived once from its config: the data set, the model, the
plan, the optimisers, the device mesh. Used to start a run and to restore a finished one."""

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import optax

from csg_jax import config as config_lib
from csg_jax import data as data_lib
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
  model = models.build_model(config.model, dataset.num_classes, use_gate=config.method == "csg",
                             gate_init=config.csg.gate.init)
  plan = Plan.from_config(config, len(dataset.splits["train"]))
  return RunSetup(config, mesh, dataset, model, plan,
                  optimizer_lib.make_optimizers(config, plan))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (fields renamed since then under their new names)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CSGError(f"{workdir!r} holds no config.json: is it a csg_jax workdir? "
                   "(train one with launch/train.py --workdir ...)")
  with open(path) as f:
    return ml_collections.ConfigDict(config_lib.upgrade(json.load(f)))


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
  """Restores the newest good checkpoint of `workdir` with the config the run was trained with."""
  setup = build(read_config(workdir), devices=devices)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=setup.config.keep_checkpoints)
  try:
    state, step = checkpointer.restore_latest(setup.abstract_state())
  finally:
    checkpointer.close()
  if state is None:
    raise CSGError(f"{workdir!r} holds no checkpoint yet; train it first with launch/train.py")
  return TrainedRun(setup, state, step)
