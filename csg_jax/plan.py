"""The plan of a run: how many steps, which objective each step trains, which optimiser it updates.

Everything that depends on the schedule is read from one `Plan`, built from (config, number of
training examples): the training loop asks it for each step's phase, the step builder for the
phases in use and their optimiser, the optimiser factory for each optimiser's role and step count.

Training is measured in examples: step s covers examples [s*B, (s+1)*B) of the data stream, so
its epoch is floor(s*B / N) even when batches straddle epoch boundaries.

Phases (the objective of a step, see losses.objective):
- method "std": every step is a "std" step.
- method "csg", schedule "joint": every step is a "joint" step (the paper's loss).
- method "csg", schedule "alternate" (the released procedure): epoch e is a "csg" epoch iff
  e >= warmup_epochs and e % period >= min_phase; all other epochs are "std" epochs.

Optimisers: "main" for std and joint runs; "std" and "csg" for the alternate schedule, each with
its own state and learning-rate schedule that advance only in its own epochs.
"""

import dataclasses
import math

PHASES = ("std", "joint", "csg")


@dataclasses.dataclass(frozen=True)
class OptimizerRole:
  """What one optimiser updates: its trunk hyperparameters, whether it trains G, its steps."""
  trunk: str  # "optimizer": config.optimizer; "alternate": config.csg.alternate (optimiser B)
  trains_gate: bool  # False: G gets a zero update from this optimiser
  steps: int  # steps it takes over the whole run; its learning-rate schedule counts in these


@dataclasses.dataclass(frozen=True)
class Plan:
  total_steps: int
  batch_size: int
  num_examples: int  # training examples per epoch
  phases: tuple[str, ...]  # phases the run uses, in PHASES order
  optimizer_of_phase: dict[str, str]  # phase -> optimiser name
  optimizers: dict[str, OptimizerRole]  # optimiser name -> role
  alternate: tuple[int, int, int] | None = None  # (warmup_epochs, period, min_phase)

  @classmethod
  def from_config(cls, config, num_examples: int) -> "Plan":
    total = math.ceil(config.num_epochs * num_examples / config.batch_size)  # both > 0
    common = dict(total_steps=total, batch_size=config.batch_size, num_examples=num_examples)
    if config.method == "std":
      return cls(**common, phases=("std",), optimizer_of_phase={"std": "main"},
                 optimizers={"main": OptimizerRole("optimizer", False, total)})
    if config.csg.schedule == "joint":
      return cls(**common, phases=("joint",), optimizer_of_phase={"joint": "main"},
                 optimizers={"main": OptimizerRole("optimizer", True, total)})
    alt = config.csg.alternate
    plan = cls(**common, phases=("std", "csg"), optimizer_of_phase={"std": "std", "csg": "csg"},
               optimizers={}, alternate=(alt.warmup_epochs, alt.period, alt.min_phase))
    csg_steps = sum(plan.phase(s) == "csg" for s in range(total))
    return dataclasses.replace(plan, optimizers={
        "std": OptimizerRole("optimizer", False, total - csg_steps),
        "csg": OptimizerRole("alternate", True, csg_steps)})

  def epoch(self, step: int) -> int:
    return (step * self.batch_size) // self.num_examples

  def is_csg_epoch(self, epoch: int) -> bool:
    warmup, period, min_phase = self.alternate
    return epoch >= warmup and epoch % period >= min_phase

  def epoch_starts(self, optimizer: str) -> tuple[int, ...]:
    """For each epoch in which `optimizer` steps, the count of its own steps before that epoch:
    where a schedule counted in its own epochs (the released MultiStepLR) moves.

    Counted epoch by epoch, not step by step: epoch e holds the steps s with
    e*N <= s*B < (e+1)*N, i.e. [ceil(e*N/B), ceil((e+1)*N/B)), cut at the end of training.
    """
    phases = [p for p, o in self.optimizer_of_phase.items() if o == optimizer]
    first_step = lambda epoch: -(-epoch * self.num_examples // self.batch_size)  # ceil
    starts, own = [], 0
    for epoch in range(self.epoch(self.total_steps - 1) + 1):
      begin, end = first_step(epoch), min(first_step(epoch + 1), self.total_steps)
      if end > begin and self.phase(begin) in phases:
        starts.append(own)
        own += end - begin
    return tuple(starts)

  def phase(self, step: int) -> str:
    """The objective of this step: one of self.phases."""
    if len(self.phases) == 1:
      return self.phases[0]
    return "csg" if self.is_csg_epoch(self.epoch(step)) else "std"
