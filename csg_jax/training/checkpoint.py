"""Checkpoints of the whole train state under <workdir>/checkpoints, with orbax.

Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save
leaves the previous checkpoints intact. Once a save is complete, a SHA-256 manifest of its files
goes to <workdir>/checkpoint_manifests/<step>.json, so later damage (a truncated or overwritten
file) is detected even where the bytes would still parse. On restore, a checkpoint that fails its
manifest or fails to load is reported and the next older one is tried; a workdir whose
checkpoints all fail is an error, never a silent restart from step 0.
"""

import hashlib
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from csg_jax import fileio
from csg_jax.log import log
from csg_jax.errors import CSGError


def _file_hashes(directory: str) -> Dict[str, str]:
  hashes = {}
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      path = os.path.join(root, name)
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      hashes[os.path.relpath(path, directory)] = digest.hexdigest()
  return hashes


class Checkpointer:
  """Saves every `every_steps` steps (and when forced), keeps the newest `keep` checkpoints."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manifests = os.path.abspath(os.path.join(workdir, "checkpoint_manifests"))
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves at multiples of every_steps, or now when forced. Returns whether it saved."""
    if not force and (self.every_steps <= 0 or step % self.every_steps):
      return False
    if step in self._manager.all_steps():
      return False
    self._write_manifests()  # for the previous save, which has had a whole interval to finish
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def _manifest_path(self, step: int) -> str:
    return os.path.join(self.manifests, f"{step}.json")

  def _write_manifests(self) -> None:
    """Hashes each completed checkpoint that has no manifest yet; drops those of deleted ones."""
    if jax.process_index() != 0:
      return
    self._manager.wait_until_finished()
    os.makedirs(self.manifests, exist_ok=True)
    self._manager.reload()
    steps = set(self._manager.all_steps())
    for step in steps:
      path = self._manifest_path(step)
      if not os.path.exists(path):
        fileio.write_json_atomic(path, _file_hashes(os.path.join(self.directory, str(step))))
    for name in os.listdir(self.manifests):
      if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in steps:
        os.remove(os.path.join(self.manifests, name))

  def _verify(self, step: int) -> Optional[str]:
    """None if the step's files match its manifest (or it has none yet), else what differs."""
    path = self._manifest_path(step)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      expected = json.load(f)
    actual = _file_hashes(os.path.join(self.directory, str(step)))
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if missing or changed:
      return (f"files {'missing' if missing else 'changed'} since it was written: "
              f"{', '.join((missing or changed)[:3])}")
    return None

  def restore_latest(self, abstract_state: Any) -> Tuple[Optional[Any], Optional[int]]:
    """(state, step) of the newest checkpoint that loads, or (None, None) in an empty workdir."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      reason = self._verify(step)
      if reason is None:
        try:
          return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state)), step
        except Exception as e:  # pylint: disable=broad-except
          # Any failure to read one checkpoint (truncated file, bad metadata, shape change) is a
          # reason to fall back to the previous one, reported; not a reason to crash here.
          reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      errors.append(f"step {step}: {reason}")
      log(f"warning: checkpoint at step {step} is unusable ({reason[:300]}); "
          "trying the previous one")
    if steps:
      raise CSGError(
          f"none of the {len(steps)} checkpoints in {self.directory} could be restored "
          f"({'; '.join(e[:200] for e in errors)}). Refusing to restart from step 0 over them: "
          "use a new --workdir, or move the checkpoints away if the config changed on purpose.")
    return None, None

  def close(self) -> None:
    self._write_manifests()
    self._manager.close()


def abstract_like(state: Any, sharding) -> Any:
  """Shape/dtype/sharding skeleton of `state`, the target orbax restores into."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def load_pytree(path: str) -> Tuple[Dict[str, Any], str]:
  """The newest checkpoint under `path` (a workdir, its checkpoints/ or one step folder) as
  plain nested dicts of arrays, and the folder it came from. For `init_from`."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if not os.path.isdir(path):
    raise CSGError(f"config.init_from={path!r} does not exist; point it at a csg_jax workdir "
                   "or one of its checkpoints/<step> folders (launch/import_torch.py writes one "
                   "from PyTorch weights)")
  step_dir = path
  if not os.path.basename(path).isdigit():
    steps = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True)
    if not steps:
      raise CSGError(f"config.init_from={path!r} holds no checkpoint (no <step> folders)")
    step_dir = os.path.join(path, str(steps[0]))
  manager = ocp.CheckpointManager(os.path.dirname(step_dir))
  try:
    tree = manager.restore(int(os.path.basename(step_dir)), args=ocp.args.StandardRestore())
  except Exception as e:  # pylint: disable=broad-except
    raise CSGError(f"config.init_from: could not read the checkpoint {step_dir} "
                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  finally:
    manager.close()
  return tree, step_dir
