"""Training: the loop (`train_and_evaluate`, the pure `train_step`), the metric writer and
preemption. A run's setup, state, checkpoints and workdir are in csg_jax.runs."""

from csg_jax.training.loop import make_train_steps, train_and_evaluate, train_step

__all__ = ["make_train_steps", "train_and_evaluate", "train_step"]
