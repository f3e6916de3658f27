"""A trained run restored from its workdir (`load_run`), and imported weights written as one
(`save_as_run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from csg_jax import optimizer as optimizer_lib
from csg_jax.errors import CSGError
from csg_jax.plan import Plan
from csg_jax.runs import checkpoint as checkpoint_lib
from csg_jax.runs import setup as setup_lib
from csg_jax.runs import state as state_lib
from csg_jax.runs import workdir as workdir_lib


@dataclasses.dataclass
class TrainedRun:
  """A finished (or interrupted) run restored from its workdir, ready for evaluation."""
  setup: setup_lib.RunSetup
  state: state_lib.TrainState
  step: int

  # The parts most callers need, by name.
  config = property(lambda self: self.setup.config)
  dataset = property(lambda self: self.setup.dataset)
  model = property(lambda self: self.setup.model)
  mesh = property(lambda self: self.setup.mesh)


def load_run(workdir: str, *, devices: Sequence[jax.Device] | None = None) -> TrainedRun:
  """Restores the newest good checkpoint of `workdir` with the config the run was trained with,
  normalising with the statistics the run trained with (dataset.json), not measured again."""
  config = workdir_lib.read_config(workdir)
  setup = setup_lib.build(config, devices=devices,
                          statistics=workdir_lib.recorded_statistics(workdir))
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=setup.config.keep_checkpoints)
  try:
    state, step = checkpointer.restore_latest(setup.abstract_state())
  finally:
    checkpointer.close()
  if state is None:
    raise CSGError(f"{workdir!r} holds no checkpoint yet; train it first with launch/train.py")
  return TrainedRun(setup, state, step)


def save_as_run(config, variables: dict[str, Any], workdir: str) -> None:
  """Writes `variables` (imported weights) as step 0 of a run of `config` in a new `workdir`:
  config.json and a checkpoint of the whole train state with fresh optimiser states, which
  load_run, evaluation and init_from then read like those of any run.

  Needs no data: the optimiser states' structure depends on the config only, not on the data
  set's size, so the plan is laid out for a nominal epoch of one batch.
  """
  workdir_lib.check_new_workdir(workdir)
  optimizers = optimizer_lib.make_optimizers(config, Plan.from_config(config, config.batch_size))
  state = state_lib.state_from_variables(variables, optimizers)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=config.keep_checkpoints)
  try:
    checkpointer.maybe_save(0, state, force=True)
  finally:
    checkpointer.close()
  workdir_lib.write_config(workdir, config)  # last: a workdir with config.json is complete
