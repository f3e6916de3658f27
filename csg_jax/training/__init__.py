"""The training machinery: the loop, the state and run setup, checkpoints, preemption, the
workdir lock, the device mesh and the metric writer."""

from csg_jax.training.loop import train_and_evaluate, train_step
from csg_jax.training.run import RunSetup, TrainedRun, build, load_run, read_config
from csg_jax.training.state import TrainState, create_train_state

__all__ = ["RunSetup", "TrainState", "TrainedRun", "build", "create_train_state", "load_run",
           "read_config", "train_and_evaluate", "train_step"]
