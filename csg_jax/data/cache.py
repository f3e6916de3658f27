"""Content-keyed cache directories, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

from csg_jax.errors import CSGError

META_FILE = "meta.json"  # Written last: a directory without it was never completed.
_FULL_HASH_LIMIT = 1 << 30  # Tarballs up to 1 GiB are hashed whole (about a second).
_EDGE_BYTES = 16 << 20  # Larger ones: their first and last 16 MiB, size and mtime.


def tarball_fingerprint(path: str) -> str:
  """A digest of a tarball's content, cheap enough to compute on every load."""
  h = hashlib.sha256()
  stat = os.stat(path)
  h.update(f"size={stat.st_size}".encode())
  with open(path, "rb") as f:
    if stat.st_size <= _FULL_HASH_LIMIT:
      while chunk := f.read(1 << 22):
        h.update(chunk)
    else:
      h.update(f"mtime={stat.st_mtime_ns}".encode())
      h.update(f.read(_EDGE_BYTES))
      f.seek(-_EDGE_BYTES, os.SEEK_END)
      h.update(f.read(_EDGE_BYTES))
  return h.hexdigest()


def files_fingerprint(entries: Iterable[tuple[str, int, int]]) -> str:
  """A digest of (relative path, size, mtime_ns) triples, order-independent."""
  h = hashlib.sha256()
  for rel, size, mtime in sorted(entries):
    h.update(f"{rel}\0{size}\0{mtime}\n".encode())
  return h.hexdigest()


def cache_key(**parts) -> str:
  """A short digest of everything that determines a cache's content."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def read_meta(directory: str) -> dict | None:
  """The metadata of a completed cache directory, or None if there is none."""
  try:
    with open(os.path.join(directory, META_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def build_atomically(directory: str, build: Callable[[str], dict]) -> dict:
  """Runs `build(tmp_dir)`, writes its returned metadata, then renames tmp_dir to `directory`.

  A crash or error leaves at most a `.tmp-*` sibling (never read, safe to delete), never a
  half-written `directory`. If another process finished the same cache first, its copy wins.
  """
  parent = os.path.dirname(directory)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(directory)}-")
  except OSError as e:
    raise CSGError(f"Cannot write the data cache in {parent!r} ({e.strerror}): "
                   "set data.cache_dir to a writable folder.") from e
  try:
    meta = build(tmp)
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(meta, f)
    try:
      os.rename(tmp, directory)
    except OSError:
      existing = read_meta(directory)  # Lost a race to an identical build?
      if existing is None:
        raise
      return existing
    return meta
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
