"""Runs and their workdirs, below both training and evaluation: building a run from its config
(setup), the workdir's files and the run's identity (workdir), the train state (state),
checkpoints (checkpoint), the workdir lock (lock), and restoring a trained run (trained)."""

from csg_jax.runs.setup import RunSetup, build, for_shapes
from csg_jax.runs.state import TrainState, create_train_state
from csg_jax.runs.trained import TrainedRun, load_run, save_as_run
from csg_jax.runs.workdir import check_new_workdir, finished_run, read_config, summary_line

__all__ = ["RunSetup", "TrainState", "TrainedRun", "build", "check_new_workdir",
           "create_train_state", "finished_run", "for_shapes", "load_run", "read_config",
           "save_as_run", "summary_line"]
