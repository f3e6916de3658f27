"""Writes that are all-or-nothing: a crash never leaves a half-written file or folder behind."""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary sibling, then renames it over `path`."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


@contextlib.contextmanager
def replace_directory_atomically(target: str) -> Iterator[str]:
  """Yields a temporary sibling folder; on success it replaces `target`, on error it is removed."""
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
