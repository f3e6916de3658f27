"""Which objective each training step optimises, and how long training is in steps.

Training is measured in examples: step s covers examples [s*B, (s+1)*B) of the data stream, so
its epoch is floor(s*B / N) even when batches straddle epoch boundaries.

- method "std": every step is an STD step.
- method "csg", schedule "joint": every step optimises the paper's joint loss.
- method "csg", schedule "alternate" (the released procedure): epoch e is a CSG epoch iff
  e >= warmup_epochs and e % period >= min_phase; all other epochs are STD epochs.
"""

import math
from typing import Dict

METHODS = ("std", "csg")
CSG_SCHEDULES = ("joint", "alternate")


def total_steps(num_epochs: float, num_examples: int, batch_size: int) -> int:
  return max(1, math.ceil(num_epochs * num_examples / batch_size))


def epoch_of_step(step: int, num_examples: int, batch_size: int) -> int:
  return (step * batch_size) // num_examples


def is_csg_epoch(epoch: int, csg_config) -> bool:
  return epoch >= csg_config.warmup_epochs and epoch % csg_config.period >= csg_config.min_phase


def phase_of_step(step: int, config, num_examples: int) -> str:
  """The objective of this step: "std", "joint" or "csg" (see losses.PHASES)."""
  if config.method == "std":
    return "std"
  if config.csg.schedule == "joint":
    return "joint"
  epoch = epoch_of_step(step, num_examples, config.batch_size)
  return "csg" if is_csg_epoch(epoch, config.csg) else "std"


def optimizer_of_phase(phase: str, config) -> str:
  """Which optimiser state a phase updates: "main", or "std"/"csg" for the alternate schedule."""
  if config.method == "csg" and config.csg.schedule == "alternate":
    return phase
  return "main"


def steps_per_optimizer(config, num_examples: int) -> Dict[str, int]:
  """How many steps each optimiser takes over the run; its schedules count in these steps."""
  n = total_steps(config.num_epochs, num_examples, config.batch_size)
  counts: Dict[str, int] = {}
  for step in range(n):
    name = optimizer_of_phase(phase_of_step(step, config, num_examples), config)
    counts[name] = counts.get(name, 0) + 1
  if config.method == "csg" and config.csg.schedule == "alternate":
    counts.setdefault("std", 0)
    counts.setdefault("csg", 0)
  return counts
