"""SIGTERM / SIGINT: finish the current step, checkpoint, exit non-zero; the same command resumes.

On a single process the signal sets a flag that the loop reads after each step. With several
processes, JAX's preemption sync point makes every process stop at the same step (its
coordination service relays the notice), so their checkpoints agree.
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from csg_jax.errors import CSGError


class Preempted(CSGError):
  """Training stopped on a signal after writing a checkpoint."""


class PreemptionWatcher:

  def __init__(self):
    self._signal = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      # With several processes JAX's own SIGTERM notifier drives the sync point: keep it.
      signals = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGTERM, signal.SIGINT)
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self._signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self._signal = signal.Signals(signum).name
    print(f"\n{self._signal} received: finishing this step and writing a checkpoint "
          "(Ctrl-C again to stop at once)", flush=True)

  @property
  def signal_name(self) -> str:
    return self._signal or "preemption notice"

  def should_stop(self, step: int, *, sync_boundary: bool) -> bool:
    """True once a stop was asked for; with several processes, at the same step on all.

    Several processes agree on a local signal (Ctrl-C, or SIGTERM without JAX's notifier) only
    at sync boundaries, where one tiny all-gather costs nothing next to logging.
    """
    if jax.process_count() == 1:
      return self._signal is not None
    try:
      if multihost_utils.reached_preemption_sync_point(step):
        return True
    except RuntimeError:
      pass  # no preemption service: rely on the local flags below
    if not sync_boundary:
      return False
    flags = multihost_utils.process_allgather(np.int32(self._signal is not None))
    return bool(np.any(flags))
