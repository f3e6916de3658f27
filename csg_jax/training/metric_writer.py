"""Training metrics to <workdir>/metrics.jsonl (one JSON object a line) and TensorBoard events.

Only process 0 writes. TensorBoard event files come from tensorboardX, so neither writing nor
viewing them needs TensorFlow.
"""

import json
import math
import os
from typing import Mapping

import jax


def _plain(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: _plain(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    for name, value in values.items():
      if isinstance(value, float):
        self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
