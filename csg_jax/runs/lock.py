"""One workdir, one run: an exclusive lock file naming the process that holds it.

A lock left by a process that no longer runs (crash, SIGKILL, preemption) is taken over. Only
process 0 of a multi-process run takes the lock: the processes of one run share the workdir.
On an object store the lock is advisory (see fileio.create_exclusive).
"""

import json
import os
import socket

from csg_jax import fileio
from csg_jax.errors import CSGError
from csg_jax.log import log

LOCK_NAME = "run.lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  return True


class WorkdirLock:

  def __init__(self, workdir: str):
    self.path = fileio.join(workdir, LOCK_NAME)
    self._held = False

  def _owner(self) -> dict | None:
    try:
      return fileio.read_json(self.path)
    except (OSError, ValueError):
      return None  # vanished or half-written: treated as stale below

  def acquire(self) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):  # the second try follows the removal of a stale lock
      if not fileio.create_exclusive(self.path, json.dumps(me)):
        owner = self._owner()
        if owner and owner.get("host") == me["host"] and _alive(int(owner.get("pid", -1))):
          raise CSGError(
              f"another run (pid {owner['pid']} on {owner['host']}) is using this workdir "
              f"({self.path}); wait for it, stop it, or choose another --workdir") from None
        if owner and owner.get("host") != me["host"]:
          raise CSGError(
              f"this workdir is locked by pid {owner.get('pid')} on host {owner.get('host')}, "
              f"which cannot be checked from here; if that run is gone, delete {self.path}")
        log(f"Taking over a stale lock of pid {owner.get('pid') if owner else '?'} "
            f"({self.path})")
        fileio.remove(self.path)
        continue
      self._held = True
      return
    raise CSGError(f"could not take the workdir lock {self.path}; another run started just now?")

  def release(self) -> None:
    if self._held:
      self._held = False
      fileio.remove(self.path)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
