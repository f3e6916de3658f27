"""A trained run restored from its workdir (`load_run`), and imported weights written as one
(`save_as_run`, which also records in imported.json what the weights need of a config)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from csg_jax import fileio
from csg_jax import methods
from csg_jax import optimizer as optimizer_lib
from csg_jax.errors import CSGError
from csg_jax.runs import checkpoint as checkpoint_lib
from csg_jax.runs import setup as setup_lib
from csg_jax.runs import state as state_lib
from csg_jax.runs import workdir as workdir_lib

# What imported weights need of a config, beside config.json (written by save_as_run): weights
# (the file), model, width, input_channels, num_classes, gate.
IMPORT_RECORD = "imported.json"


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
  normalising with the statistics the run trained with (dataset.json), not measured again.

  A checkpoint whose shapes that config does not build (imported weights whose config's data
  has other channel or class counts) is one CSGError line saying what differs and how to fix it.
  """
  config = workdir_lib.read_config(workdir)
  setup = setup_lib.build(config, devices=devices,
                          statistics=workdir_lib.recorded_statistics(workdir))
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=setup.config.keep_checkpoints)
  try:
    state, step = checkpointer.restore_latest(setup.abstract_state(), "its config.json")
  except checkpoint_lib.ShapeMismatch as e:
    record = read_import_record(workdir)
    if record is None or not e.fields or not set(e.fields) <= {"channels", "classes"}:
      raise
    # Weights imported with a config whose data does not fit them: the fix is a new import.
    raise CSGError(
        f"{e.where} {e.what}: the weights ({record['weights']}) were imported with a config whose "
        "data does not fit them; import them again, into a new --workdir, with a config whose "
        f"data has {record['input_channels']} channels and {record['num_classes']} classes (the "
        "checkpoint itself is intact)") from None
  finally:
    checkpointer.close()
  if state is None:
    raise CSGError(f"{workdir!r} holds no checkpoint yet; train it first with launch/train.py")
  return TrainedRun(setup, state, step)


def read_import_record(workdir: str) -> dict[str, Any] | None:
  """What the weights imported into `workdir` need (IMPORT_RECORD), or None for a trained run."""
  path = fileio.join(workdir, IMPORT_RECORD)
  return fileio.read_json(path) if fileio.exists(path) else None


def save_as_run(config, variables: dict[str, Any], workdir: str,
                record: Mapping[str, Any] | None = None) -> None:
  """Writes `variables` (imported weights) as step 0 of a run of `config` in a new `workdir`:
  config.json and a checkpoint of the whole train state with fresh optimiser states, which
  load_run, evaluation and init_from then read like those of any run; and `record` (what the
  weights need, see IMPORT_RECORD) when given.

  Needs no data: the optimiser states' structure depends on the config only, not on the data
  set's size, so the plan is laid out for a nominal epoch of one batch.
  """
  workdir_lib.check_new_workdir(workdir)
  method = methods.for_config(config)
  optimizers = optimizer_lib.make_optimizers(config, method.plan(config.batch_size), method)
  state = state_lib.state_from_variables(variables, optimizers)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0,
                                             keep=config.keep_checkpoints)
  try:
    checkpointer.maybe_save(0, state, force=True)
  finally:
    checkpointer.close()
  if record is not None:
    fileio.write_json_atomic(fileio.join(workdir, IMPORT_RECORD), dict(record))
  workdir_lib.write_config(workdir, config)  # last: a workdir with config.json is complete
