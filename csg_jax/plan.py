"""The plan of a run: how many steps, which objective each step trains, which optimiser it updates.

Everything that depends on the schedule is read from one `Plan`, which the run's method builds
(`methods.make_plan(config, num_examples)`): the training loop asks it for each step's phase, the
step builder for the phases in use and their optimiser, the optimiser factory for each
optimiser's role and step count.

Training is measured in examples: step s covers examples [s*B, (s+1)*B) of the data stream, so
its epoch is floor(s*B / N) even when batches straddle epoch boundaries.

A plan has one phase (every step trains the same objective) or two that alternate by epoch
(`alternate` = (warmup_epochs, period, min_phase)): epoch e is an epoch of the second phase iff
e >= warmup_epochs and e % period >= min_phase, else of the first (CSG's released procedure).
Each optimiser has its own state and learning-rate schedules, which advance only in its steps.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class OptimizerRole:
  """What one optimiser updates, with what, and for how many steps."""
  trunk_optimizer: str  # "sgd" | "adam": the trunk's base optimiser
  trunk_learning_rate: float  # its peak learning rate
  freeze: str  # regex of the trunk layers it leaves unchanged ("" for none)
  steps: int  # steps it takes over the whole run; its learning-rate schedules count in these
  gate_learning_rate: float | None = None  # None: the `gates` collection gets a zero update


def total_steps(num_epochs: float, batch_size: int, num_examples: int) -> int:
  return math.ceil(num_epochs * num_examples / batch_size)  # all > 0


@dataclasses.dataclass(frozen=True)
class Plan:
  total_steps: int
  batch_size: int
  num_examples: int  # training examples per epoch
  phases: tuple[str, ...]  # phases the run uses: one, or (first, second) when they alternate
  optimizer_of_phase: dict[str, str]  # phase -> optimiser name
  optimizers: dict[str, OptimizerRole]  # optimiser name -> role
  alternate: tuple[int, int, int] | None = None  # (warmup_epochs, period, min_phase)

  def epoch(self, step: int) -> int:
    return (step * self.batch_size) // self.num_examples

  def is_second_phase_epoch(self, epoch: int) -> bool:
    warmup, period, min_phase = self.alternate
    return epoch >= warmup and epoch % period >= min_phase

  def steps_of_phase(self, phase: str) -> int:
    return sum(self.phase(s) == phase for s in range(self.total_steps))

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
    return self.phases[1] if self.is_second_phase_epoch(self.epoch(step)) else self.phases[0]
