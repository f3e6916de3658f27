"""Files of a run, on a local disk or an object store (gs://, s3://), through one set of functions.

Every workdir path goes through here: local paths use the os module, URIs use `etils.epath`
(fsspec underneath; `pip install csg_jax[cloud]` brings gcsfs and s3fs). Writes are
all-or-nothing either way: locally a temporary sibling is renamed over the target; on an object
store the file is written locally first and then uploaded as one object, which readers see
whole or not at all.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any
from collections.abc import Iterator

from csg_jax.errors import CSGError


def is_remote(path: str) -> bool:
  """True for object-store URIs (gs://bucket/..., s3://bucket/...)."""
  return "://" in str(path)


def _epath(path: str):
  from etils import epath  # pylint: disable=g-import-not-at-top  (only for URIs)
  return epath.Path(path)


def _cloud_error(path: str, e: Exception) -> CSGError:
  scheme = str(path).split("://", 1)[0]
  package = {"gs": "gcsfs", "s3": "s3fs"}.get(scheme, f"an fsspec package for {scheme}://")
  if isinstance(e, ImportError):
    return CSGError(f"{path}: {scheme}:// paths need {package}; install it with "
                    "`pip install 'csg_jax[cloud]'`")
  return CSGError(f"{path}: {type(e).__name__}: {e}. Check the bucket name and the credentials "
                  "(for s3://, AWS_* environment variables; for gs://, gcloud auth)")


@contextlib.contextmanager
def _remote_errors(path: str, *, writing: bool = False) -> Iterator[None]:
  """Turns a missing client library or an unreachable store into one clear CSGError; a missing
  file stays a FileNotFoundError when reading (a missing bucket, when writing, does not)."""
  try:
    yield
  except CSGError:
    raise
  except FileNotFoundError as e:
    if not writing:
      raise
    raise _cloud_error(path, e) from None
  except (ImportError, OSError, ValueError) as e:
    raise _cloud_error(path, e) from None


def join(path: str, *parts: str) -> str:
  """os.path.join that keeps URIs intact."""
  if is_remote(path):
    return "/".join([str(path).rstrip("/"), *parts])
  return os.path.join(path, *parts)


def absolute(path: str) -> str:
  """An absolute local path (user folder expanded), or the URI unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def name(path: str) -> str:
  """What outputs that are shared call a workdir: the last part of its path, without the
  machine's folders."""
  return basename(absolute(path))


def basename(path: str) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  with _remote_errors(path):
    return _epath(path).exists()


def isdir(path: str) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  with _remote_errors(path):
    return _epath(path).is_dir()


def makedirs(path: str) -> None:
  """Creates the folder and its parents (object stores have no folders: nothing to do)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names in a folder; [] when it does not exist."""
  if not is_remote(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  with _remote_errors(path):
    p = _epath(path)
    return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def remove(path: str) -> None:
  """Removes a file; a missing one is fine."""
  if not is_remote(path):
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    return
  with _remote_errors(path):
    p = _epath(path)
    if p.exists():
      p.unlink()


def rmtree(path: str) -> None:
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  with _remote_errors(path):
    p = _epath(path)
    if p.exists():
      p.rmtree()


def size(path: str) -> int:
  """A file's size in bytes."""
  if not is_remote(path):
    return os.path.getsize(path)
  with _remote_errors(path):
    return int(_epath(path).stat().length)


def open_read(path: str):
  """A binary file object for reading (use it in a `with`)."""
  if not is_remote(path):
    return open(path, "rb")
  with _remote_errors(path):
    return _epath(path).open("rb")


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  with _remote_errors(path):
    return _epath(path).read_bytes()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def walk_files(path: str) -> list[str]:
  """Paths of all files under a folder, relative to it, sorted; [] when it does not exist."""
  if not is_remote(path):
    return sorted(os.path.relpath(os.path.join(root, name), path)
                  for root, _, files in os.walk(path) for name in files)
  with _remote_errors(path):
    files, pending = [], [_epath(path)] if _epath(path).is_dir() else []
    while pending:  # epath's walk and ** glob do not work on every fsspec store
      for child in pending.pop().iterdir():
        (pending if child.is_dir() else files).append(child)
    return sorted(str(f.relative_to(_epath(path))) for f in files)


def _upload(local: str, path: str) -> None:
  with _remote_errors(path, writing=True):
    with open(local, "rb") as f:
      _epath(path).write_bytes(f.read())


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a local temporary path to write; on success it becomes `path` in one step, on error
  it is removed. `suffix` keeps an extension some writers insist on (numpy's .npy)."""
  if is_remote(path):
    with tempfile.TemporaryDirectory(prefix="csg_jax-upload-") as tmp_dir:
      tmp = os.path.join(tmp_dir, basename(path) + suffix)
      yield tmp
      _upload(tmp, path)
    return
  tmp = f"{path}.tmp-{os.getpid()}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  with atomic_file(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary file, then puts it in place of `path` in one step."""
  write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def create_exclusive(path: str, text: str) -> bool:
  """Writes `path` only if it does not exist; False if it did.

  Exclusive on a local disk (O_EXCL). Object stores offer no such primitive through fsspec: there
  the check and the write are two requests, so two runs started in the same second can both win.
  """
  if is_remote(path):
    if exists(path):
      return False
    write_text_atomic(path, text)
    return True
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    f.write(text)
  return True


def upload_tree(local_dir: str, path: str) -> None:
  """Copies every file under local_dir to the same relative path under `path` (a URI)."""
  for rel in walk_files(local_dir):
    _upload(os.path.join(local_dir, rel), join(path, *rel.split(os.sep)))


def download_tree(path: str, local_dir: str) -> None:
  """Copies every file under `path` (a URI) into local_dir, keeping relative paths."""
  for rel in walk_files(path):
    target = os.path.join(local_dir, *rel.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
      f.write(read_bytes(join(path, rel)))


@contextlib.contextmanager
def replace_directory_atomically(target: str) -> Iterator[str]:
  """Yields a temporary sibling folder; on success it replaces `target`, on error it is removed.
  Local folders only (the data set builders' outputs)."""
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(target)}-", dir=parent)
  try:
    yield tmp
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
