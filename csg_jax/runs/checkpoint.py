"""Checkpoints of the whole train state under <workdir>/checkpoints, with orbax.

Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save
leaves the previous checkpoints intact. Once a save is complete, a SHA-256 manifest of its files
goes to <workdir>/checkpoint_manifests/<step>.json, so later damage (a truncated or overwritten
file) is detected even where the bytes would still parse. On restore, a checkpoint that fails its
manifest or fails to load is reported and the next older one is tried; a workdir whose
checkpoints all fail is an error, never a silent restart from step 0. A sound checkpoint whose
shapes (read from its metadata, before any array) are not those the config builds is not damage:
restoring stops with a `ShapeMismatch` naming the config field that explains the shapes.

Workdirs on gs:// are written by orbax directly. Other object stores (s3://), which this orbax
cannot write to, are staged: orbax saves into a local folder, each completed step is uploaded
and only then gets its manifest, so a step without a manifest on the store is an incomplete
upload and is never restored. Staging needs one process (a multi-host run on s3:// is refused).
"""

import hashlib
import os
import shutil
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from csg_jax import fileio
from csg_jax.log import log
from csg_jax.errors import CSGError

# Object stores orbax (tensorstore) reads and writes itself; others go through a local stage.
_ORBAX_NATIVE_SCHEMES = ("gs",)
_ITEM = "default"  # the folder of a step that holds the state (orbax's name for a single item)
# The collections of a train state that the config's model decides; the rest (step, optimiser
# states) follow from them and the optimiser settings.
_MODEL_COLLECTIONS = ("params/", "batch_stats/", "gates/")


class ShapeMismatch(CSGError):
  """A readable checkpoint whose shapes are not those the config builds: not damage.

  `where` names the checkpoint, `what` says what differs, `fields` are the config fields that
  explain it (model.name, model.width, channels, classes, method; empty when none does).
  """

  def __init__(self, where: str, what: str, fix: str, fields: tuple[str, ...] = ()):
    super().__init__(f"{where} {what}: {fix} (the checkpoint itself is intact)")
    self.where, self.what, self.fields = where, what, fields


def _staged(directory: str) -> bool:
  return fileio.is_remote(directory) and directory.split("://")[0] not in _ORBAX_NATIVE_SCHEMES


def _file_hashes(directory: str) -> dict[str, str]:
  hashes = {}
  for rel in fileio.walk_files(directory):
    digest = hashlib.sha256()
    with fileio.open_read(fileio.join(directory, rel)) as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    hashes[rel] = digest.hexdigest()
  return hashes


def _step_dirs(directory: str) -> dict[int, str]:
  return {int(name): fileio.join(directory, name)
          for name in fileio.listdir(directory) if name.isdigit()}


class Checkpointer:
  """Saves every `every_steps` steps (and when forced), keeps the newest `keep` checkpoints."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int):
    self.workdir = workdir  # as given, for messages
    workdir = fileio.absolute(workdir)
    self.directory = fileio.join(workdir, "checkpoints")  # where the checkpoints live
    self.manifests = fileio.join(workdir, "checkpoint_manifests")
    self.every_steps = every_steps
    self._stage = None  # local folder orbax works in, for object stores orbax cannot write
    self._uploaded = set()  # staged steps that are complete on the store
    if _staged(self.directory):
      if jax.process_count() > 1:
        raise CSGError(f"a workdir on {self.directory.split('://')[0]}:// takes checkpoints "
                       "through a local copy, which needs a single process; use a gs:// or "
                       "shared-filesystem workdir for a multi-host run")
      self._stage = tempfile.mkdtemp(prefix="csg_jax-checkpoints-")
      self._download_complete_steps()
    self._manager = ocp.CheckpointManager(
        self._stage or self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def _download_complete_steps(self) -> None:
    manifests = set(fileio.listdir(self.manifests))
    for step, path in _step_dirs(self.directory).items():
      if f"{step}.json" in manifests:  # else an upload that did not finish
        fileio.download_tree(path, os.path.join(self._stage, str(step)))
        self._uploaded.add(step)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves at multiples of every_steps, or now when forced. Returns whether it saved."""
    if not force and (self.every_steps <= 0 or step % self.every_steps):
      return False
    if step in self._manager.all_steps():
      return False
    self._write_manifests()  # for the previous save, which has had a whole interval to finish
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if self._stage:
      self._write_manifests()  # upload now: a local stage dies with the machine
    return saved

  def _manifest_path(self, step: int) -> str:
    return fileio.join(self.manifests, f"{step}.json")

  def _write_manifests(self) -> None:
    """Hashes each completed checkpoint that has no manifest yet (uploading it first when
    staged); drops the manifests (and uploads) of checkpoints orbax has deleted."""
    if jax.process_index() != 0:
      return
    self._manager.wait_until_finished()
    fileio.makedirs(self.manifests)
    self._manager.reload()
    steps = set(self._manager.all_steps())
    local = self._stage or self.directory
    have = set(fileio.listdir(self.manifests))
    for step in sorted(steps):
      if f"{step}.json" not in have:
        step_dir = fileio.join(local, str(step))
        if self._stage:
          fileio.upload_tree(step_dir, fileio.join(self.directory, str(step)))
          self._uploaded.add(step)
        fileio.write_json_atomic(self._manifest_path(step), _file_hashes(step_dir))
    for step in sorted(self._uploaded - steps):
      fileio.rmtree(fileio.join(self.directory, str(step)))
      self._uploaded.discard(step)
    for name in have:
      if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in steps:
        fileio.remove(fileio.join(self.manifests, name))

  def _verify(self, step: int) -> str | None:
    """None if the step's files match its manifest (or it has none yet), else what differs."""
    path = self._manifest_path(step)
    if not fileio.exists(path):
      return None
    expected = fileio.read_json(path)
    actual = _file_hashes(fileio.join(self._stage or self.directory, str(step)))
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if missing or changed:
      return (f"files {'missing' if missing else 'changed'} since it was written: "
              f"{', '.join((missing or changed)[:3])}")
    return None

  def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]] | None:
    """{'params/backbone/stem_conv/kernel': shape, ...} of a checkpoint, from orbax's metadata
    (no array is read); None when the metadata cannot be read (then restoring tells why)."""
    path = epath.Path(self._stage or self.directory) / str(step) / _ITEM
    handler = ocp.StandardCheckpointHandler()
    try:
      metadata = handler.metadata(path)
      return tree_shapes(getattr(metadata, "tree", metadata))
    except Exception:  # pylint: disable=broad-except
      return None
    finally:
      handler.close()

  def _check_shapes(self, step: int, abstract_state: Any, config_name: str) -> None:
    """Raises ShapeMismatch when checkpoint `step` is readable but holds other shapes than
    `abstract_state`, in the terms of the config (`abstract_state.explain_shapes`, when it has
    it: a TrainState), else naming the first differing arrays."""
    stored = self.stored_shapes(step)
    if stored is None:
      return
    wanted = tree_shapes(abstract_state)
    differ = [k for k in wanted if k in stored and stored[k] != wanted[k]]
    # Other names in the model's collections are other layers; other names elsewhere (optimiser
    # states) are left to orbax, which maps containers more loosely than these names do.
    missing = [k for k in wanted if k not in stored and k.startswith(_MODEL_COLLECTIONS)]
    extra = [k for k in stored if k not in wanted and k.startswith(_MODEL_COLLECTIONS)]
    if (not differ and not missing and not extra) or not any(k in stored for k in wanted):
      return  # it fits; or no name is shared, and orbax's own reading decides
    where = f"the checkpoint in {self.workdir} (step {step})"
    explain = getattr(abstract_state, "explain_shapes", None)
    explained = explain(stored, config_name) if explain is not None else None
    if explained is not None:
      raise ShapeMismatch(where, *explained)
    listed = ([f"{k}: checkpoint {stored[k]} vs config {wanted[k]}" for k in differ]
              + [f"{k} is not in the checkpoint" for k in missing]
              + [f"{k} is not in {config_name}'s model" for k in extra])
    raise ShapeMismatch(
        where, f"holds other shapes than {config_name} builds: {'; '.join(listed[:3])}"
        f"{f' ({len(listed)} in all)' if len(listed) > 3 else ''}",
        "restore it with the config (and csg_jax version) it was written with")

  def restore_latest(self, abstract_state: Any,
                     config_name: str = "this config") -> tuple[Any | None, int | None]:
    """(state, step) of the newest checkpoint that loads, or (None, None) in an empty workdir.

    A checkpoint that fails its manifest or fails to load is damaged: reported, and the previous
    one is tried. One that is sound but holds other shapes than `abstract_state` is a
    ShapeMismatch (one line naming what `config_name` would have to set), raised before orbax
    reads it.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      reason = self._verify(step)
      if reason is None:
        self._check_shapes(step, abstract_state, config_name)
        try:
          return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state)), step
        except Exception as e:  # pylint: disable=broad-except
          # Any failure to read one checkpoint (truncated file, bad metadata) is a reason to
          # fall back to the previous one, reported; not a reason to crash here.
          reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      errors.append(f"step {step}: {reason}")
      log(f"warning: checkpoint at step {step} is unusable ({reason[:300]}); "
          "trying the previous one")
    if steps:
      raise CSGError(
          f"none of the {len(steps)} checkpoints in {self.directory} could be restored "
          f"({'; '.join(e[:200] for e in errors)}). Refusing to restart from step 0 over them: "
          "use a new --workdir, or move the damaged checkpoints away to start this one over.")
    return None, None

  def close(self) -> None:
    self._write_manifests()
    self._manager.close()
    if self._stage:
      shutil.rmtree(self._stage, ignore_errors=True)


def _key_name(key: Any) -> str:
  for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/backbone/stem_conv/kernel': shape, ...} of a state, an abstract state or a
  checkpoint's metadata tree: attributes, keys and indices all become '/'-joined names."""
  return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def abstract_like(state: Any, sharding) -> Any:
  """Shape/dtype/sharding skeleton of `state`, the target orbax restores into."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def load_pytree(path: str) -> tuple[dict[str, Any], str]:
  """The newest checkpoint under `path` (a workdir, its checkpoints/ or one step folder) as
  plain nested dicts of arrays, and the folder it came from. For `init_from`."""
  path = fileio.absolute(path)
  if fileio.isdir(fileio.join(path, "checkpoints")):
    path = fileio.join(path, "checkpoints")
  if not fileio.isdir(path):
    raise CSGError(f"config.init_from={path!r} does not exist; point it at a csg_jax workdir "
                   "or one of its checkpoints/<step> folders (launch/import_torch.py writes one "
                   "from PyTorch weights)")
  step_dir = path
  if not fileio.basename(path).isdigit():
    steps = _step_dirs(path)
    if not steps:
      raise CSGError(f"config.init_from={path!r} holds no checkpoint (no <step> folders)")
    step_dir = steps[max(steps)]
  with tempfile.TemporaryDirectory(prefix="csg_jax-init-from-") as stage:
    local = step_dir
    if _staged(step_dir):
      local = os.path.join(stage, fileio.basename(step_dir))
      fileio.download_tree(step_dir, local)
    parent, step = local.rstrip("/").rsplit("/", 1)
    manager = ocp.CheckpointManager(parent)
    try:
      tree = manager.restore(int(step), args=ocp.args.StandardRestore())
    except Exception as e:  # pylint: disable=broad-except
      raise CSGError(f"config.init_from: could not read the checkpoint {step_dir} "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                     ) from None
    finally:
      manager.close()
  return tree, step_dir
