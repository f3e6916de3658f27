"""Training metrics to <workdir>/metrics.jsonl (one JSON object a line) and TensorBoard events
(the same scalars, plus figures as images).

Only process 0 writes. TensorBoard event files come from tensorboardX, so neither writing nor
viewing them needs TensorFlow. For a workdir on an object store, which cannot append, both are
written to a local folder and uploaded whole at each flush (every checkpoint and at the end).
"""

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping

import jax

from csg_jax import fileio


def _json_number(value):
  """A metric as a JSON number; NaN and infinities as the strings 'nan', 'inf', '-inf'."""
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool = True, images: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    # Whether figures are wanted: callers check it before rendering, which is what costs.
    self.images = images and self.enabled
    self._jsonl = None
    self._tb = None
    self._workdir = workdir
    self._stage = None  # local copy of the workdir's metric files, for object stores
    if self.enabled:
      local = workdir
      if fileio.is_remote(workdir):
        local = self._stage = tempfile.mkdtemp(prefix="csg_jax-metrics-")
        remote_jsonl = fileio.join(workdir, "metrics.jsonl")
        if fileio.exists(remote_jsonl):  # a resumed run appends to the rows it wrote before
          with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
            f.write(fileio.read_bytes(remote_jsonl))
      self._jsonl = open(os.path.join(local, "metrics.jsonl"), "a", buffering=1)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(local, "tensorboard"))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: _json_number(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    for name, value in values.items():
      if isinstance(value, float):
        self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def write_image(self, step: int, tag: str, image) -> None:
    """A uint8 RGB [H, W, 3] image to TensorBoard (a rendered figure: not in metrics.jsonl)."""
    if self.images:
      self._tb.add_image(tag, image, int(step), dataformats="HWC")

  def write_tensorboard_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Scalars under their full tags, TensorBoard only: per-class counts that would crowd
    metrics.jsonl's one row per evaluation."""
    if self.enabled:
      for tag, value in scalars.items():
        self._tb.add_scalar(tag, float(value), int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()
      if self._stage:
        fileio.upload_tree(self._stage, self._workdir)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()  # closing flushes both writers
      self._tb.close()
      if self._stage:
        fileio.upload_tree(self._stage, self._workdir)
        shutil.rmtree(self._stage, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
