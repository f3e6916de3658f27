"""TFDS data sets as random-access sources over ArrayRecord files: reading needs no TensorFlow.

Preparing a data set (download, then TFDS's builder code writes the files) is separate: most image
builders encode with TensorFlow, installed by the `tfds` extra. tensorflow_datasets is imported
only here, and only when data.source is 'tfds'.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from csg_jax import fileio
from csg_jax.data import cache
from csg_jax.data.dataset import Dataset, check_labels, resize_image
from csg_jax.errors import CSGError
from csg_jax.log import log


_LABEL_CHUNK = 8192  # Records per read when collecting every label.
PROBE_TIMEOUT_S = 3.0  # How long the network check before a download waits for each host.
# Checked when TFDS lists no download URLs for a data set: most of TFDS's downloads are there.
FALLBACK_URL = "https://storage.googleapis.com/"
_PORTS = {"http": 80, "https": 443, "ftp": 21}
# TFDS writes <name>/[<config>/]incomplete.*, downloads/[<name>/]*.tmp.*, downloads/extracted/*:
# what a failed prepare may have created lies within this many levels of data_dir.
_SNAPSHOT_LEVELS = 3


class TfdsSplit:
  """A Split over a TFDS data source; decodes the 'image' and 'label' features on read."""

  def __init__(self, source: Sequence[Any], split: str, image_size: int | None, num_classes: int,
               open_label_source: Callable[[], Sequence[Any]]):
    """open_label_source: opens the split without decoding images, for `labels`."""
    self._source = source
    self._split = split
    self._image_size = image_size
    self._num_classes = num_classes
    self._open_label_source = open_label_source
    self._batched = hasattr(source, "__getitems__")  # Batched reads when the source has them.

  def __len__(self) -> int:
    return len(self._source)

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """Every label in order: one pass over the records, opened once and only when asked for."""
    fetch = self._open_label_source().__getitems__
    keys = list(range(len(self)))
    labels = np.array([r["label"] for start in range(0, len(keys), _LABEL_CHUNK)
                       for r in fetch(keys[start:start + _LABEL_CHUNK])], np.int32)
    check_labels(self._split, labels, self._num_classes)
    return labels

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")  # ArrayRecord reads faster in file order.
    records = self._fetch([int(i) for i in indices[order]])
    images = np.stack([self._image(r["image"]) for r in records])
    labels = np.array([r["label"] for r in records], np.int32)
    check_labels(self._split, labels, self._num_classes)
    out_images, out_labels = np.empty_like(images), np.empty_like(labels)
    out_images[order], out_labels[order] = images, labels
    return out_images, out_labels

  def _fetch(self, keys: list[int]) -> list[dict]:
    if self._batched:
      try:
        return self._source.__getitems__(keys)
      except TypeError:
        # tfds.testing.mock_data (4.9.10) installs an unbound __getitems__; items still work.
        self._batched = False
    return [self._source[k] for k in keys]

  def _image(self, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    if self._image_size is None or image.shape[:2] == (self._image_size,) * 2:
      return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(resize_image(pil, self._image_size)).reshape(
        self._image_size, self._image_size, image.shape[-1])


def prepare_command(name: str, data_dir) -> str:
  """A command that prepares `name` into `data_dir` from a fresh checkout's venv."""
  return (f'pip install -e ".[tfds]" && python launch/prepare_tfds.py --name={name} '
          f"--data_dir={data_dir}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
  """Keeps library warnings off the terminal while TFDS runs: absl logging (TFDS's 'Variant folder
  ... has no dataset_info.json'), urllib3's retries and Python warnings. Errors still show."""
  previous = logging.root.manager.disable
  logging.disable(max(previous, logging.WARNING))
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield
  finally:
    logging.disable(previous)


def can_connect(host: str, port: int) -> str | None:
  """None when a TCP connection to host:port opens, else why not (the network check's probe)."""
  try:
    socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    return None
  except OSError as e:
    return e.strerror or str(e) or type(e).__name__


def download_hosts(builder) -> dict[tuple[str, int], str]:
  """{(host, port): what it is} that downloading `builder`'s data set connects to.

  The hosts of the download URLs TFDS lists for it (its checksums file), less those already
  downloaded into <data_dir>/downloads; FALLBACK_URL's when TFDS lists none; none for a data set
  whose files are placed by hand. Each is reached through the proxy the environment sets for it.
  """
  try:
    urls = list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except  (reading TFDS's checksums file may fail)
    urls = []
  direct = "where its files are downloaded from"
  if not urls:
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
      return {}
    urls, direct = [FALLBACK_URL], "where TFDS downloads most data sets from"
  downloaded = _downloaded_urls(os.path.join(str(builder.data_dir_root), "downloads"))
  proxies = urllib.request.getproxies()
  hosts = {}
  for url in urls:
    parts, what = urllib.parse.urlsplit(url), direct
    if url in downloaded or not parts.hostname:
      continue
    proxy = proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass_environment(parts.hostname, proxies):
      parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
      what = f"the {urllib.parse.urlsplit(url).scheme} proxy set in the environment"
    try:
      port = parts.port or _PORTS.get(parts.scheme, 443)
    except ValueError:  # a port that is no number: TFDS's download will say so
      continue
    if parts.hostname:
      hosts.setdefault((parts.hostname, port), what)
  return hosts


def _downloaded_urls(downloads: str) -> set[str]:
  """The URLs TFDS has finished downloading into `downloads` (named by the .INFO file it writes
  beside each download, in downloads/ or downloads/<name>/)."""
  urls = set()
  for folder in [downloads] + _subfolders(downloads):
    for entry in _entries(folder):
      if entry.name.endswith(".INFO") and _finished_download(entry.path):
        try:
          with open(entry.path, encoding="utf-8") as f:
            urls.update(json.load(f).get("urls", ()))
        except (OSError, ValueError, AttributeError):
          continue
  return urls


def check_network(name: str, builder, probe: Callable[[str, int], str | None] | None = None,
                  timeout: float | None = None) -> None:
  """CSGError, within about `timeout` seconds, when no host the download needs can be reached.

  Without it an offline download retries each URL for minutes before failing. probe(host, port)
  returns None or why the host cannot be reached (default: can_connect); each runs in a daemon
  thread, so a resolver that never answers costs `timeout` (default PROBE_TIMEOUT_S) at most.
  """
  probe = probe or can_connect
  timeout = PROBE_TIMEOUT_S if timeout is None else timeout
  hosts = download_hosts(builder)
  results = {}

  def attempt(address):
    try:
      results[address] = probe(*address)
    except Exception as e:  # pylint: disable=broad-except  (a probe that fails: unreachable)
      results[address] = _one_line(e)

  threads = [threading.Thread(target=attempt, args=(a,), daemon=True) for a in hosts]
  for thread in threads:
    thread.start()
  deadline = time.monotonic() + timeout
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  reasons = {a: results.get(a, f"no answer within {timeout:g} s") for a in hosts}
  if not hosts or None in reasons.values():
    return  # one host answers: the network is there (a checksums file may list stale hosts)
  (host, port), what = next(iter(hosts.items()))
  others = f", nor can any other of the {len(hosts)} hosts it needs" if len(hosts) > 1 else ""
  raise CSGError(
      f"TFDS data set {name!r} cannot be downloaded: {host}:{port}, {what}, cannot be reached "
      f"({str(reasons[host, port]).rstrip('.')}){others}. Prepare it on a machine with internet "
      f"access (`{prepare_command(name, '<dir>')}`) and copy <dir>/{name} into "
      f"{builder.data_dir_root}, or set data.data_dir to a prepared copy.")


def open_builder(name: str, data_dir: str | None):
  """The TFDS builder of `name` writing array_record files under `data_dir` (None: TFDS's)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy, optional)
  try:
    with quiet():
      return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
    raise CSGError(f"TFDS cannot open data set {name!r} (data_dir={data_dir!r}): "
                   f"{_one_line(e)}; check the name (data.name).") from e


def prepare(builder, name: str, probe: Callable[[str, int], str | None] | None = None) -> None:
  """Downloads and prepares `builder`'s data set (called `name`) as array_record files.

  First checks that the download's hosts can be reached (check_network, with `probe`). Preparing
  runs TFDS's own builder code, which for most image data sets encodes with TensorFlow: a missing
  module is named with the command that installs it. A failure removes what it wrote under
  data_dir, except downloads that finished (TFDS reuses them); what was there before stays.
  """
  where = str(builder.data_dir_root)
  with quiet():
    if builder.is_prepared():
      return
    check_network(name, builder, probe)
    with _removed_on_failure(where):
      _download_and_prepare(builder, name, where)


def _download_and_prepare(builder, name: str, where: str) -> None:
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
    missing = _missing_module(e)
    if missing:
      raise CSGError(f"Preparing TFDS data set {name!r} needs the Python module {missing!r}, "
                     "which is not installed (reading prepared data does not): "
                     f"`{prepare_command(name, where)}` installs it and prepares the data.") from e
    raise CSGError(f"TFDS could not download and prepare {name!r} into {where}: {_one_line(e)}. "
                   f"Prepare it where it can be downloaded (`{prepare_command(name, where)}`) "
                   "and copy the data over, or set data.data_dir to where it is prepared.") from e


@contextlib.contextmanager
def _removed_on_failure(root: str) -> Iterator[None]:
  """On an exception, removes the paths within _SNAPSHOT_LEVELS of local folder `root` that were
  not there before (all of `root`, and the folders above it, when it did not exist), keeping the
  downloads that finished."""
  if fileio.is_remote(root):
    yield
    return
  top = os.path.abspath(root)
  while not os.path.exists(os.path.dirname(top)):  # the highest folder the attempt may create
    top = os.path.dirname(top)
  before = _snapshot(top, _SNAPSHOT_LEVELS) if os.path.exists(top) else set()
  try:
    yield
  except BaseException:
    _remove_new(top, before, _SNAPSHOT_LEVELS, os.path.join(os.path.abspath(root), "downloads"))
    raise


def _entries(folder: str) -> list[os.DirEntry]:
  try:
    with os.scandir(folder) as entries:
      return list(entries)
  except OSError:
    return []


def _subfolders(folder: str) -> list[str]:
  return [e.path for e in _entries(folder) if e.is_dir(follow_symlinks=False)]


def _snapshot(path: str, levels: int) -> set[str]:
  """`path` and what lies within `levels` levels below it."""
  paths = {path}
  if levels:
    for entry in _entries(path):
      paths |= (_snapshot(entry.path, levels - 1) if entry.is_dir(follow_symlinks=False)
                else {entry.path})
  return paths


def _remove_new(path: str, before: set[str], levels: int, downloads: str) -> None:
  if path not in before:
    _remove(path, downloads)
  elif levels and os.path.isdir(path) and not os.path.islink(path):
    for entry in _entries(path):
      _remove_new(entry.path, before, levels - 1, downloads)


def _remove(path: str, downloads: str) -> None:
  """Removes `path` (a file or folder), keeping the finished downloads (a file and its .INFO)
  in `downloads` and the folders that hold them."""
  holds_downloads = (_within(path, downloads) or _within(downloads, path)) and not _within(
      path, os.path.join(downloads, "extracted"))
  if os.path.isdir(path) and not os.path.islink(path):
    if not holds_downloads:
      shutil.rmtree(path, ignore_errors=True)
      return
    for entry in _entries(path):
      _remove(entry.path, downloads)
    with contextlib.suppress(OSError):
      os.rmdir(path)  # fails while it holds a finished download
  elif not (holds_downloads and _finished_download(path)):
    with contextlib.suppress(OSError):
      os.remove(path)


def _within(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _finished_download(path: str) -> bool:
  """A file TFDS finished downloading (it writes <file>.INFO beside it last), or its .INFO."""
  if path.endswith(".INFO"):
    return os.path.exists(path[:-len(".INFO")])
  return os.path.exists(path + ".INFO")


def _missing_module(error: BaseException) -> str | None:
  """The module whose import failed somewhere in `error`'s chain (TFDS re-raises with context)."""
  while error is not None:
    if isinstance(error, ModuleNotFoundError) and error.name:
      return error.name.split(".")[0]
    error = error.__cause__ or error.__context__
  return None


def _one_line(error: BaseException) -> str:
  """TFDS messages list every data set or every cause on further lines: keep the first."""
  first = next((l.strip() for l in str(error).splitlines() if l.strip()), "").rstrip(".")
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


def local_copy(data_dir: str, name: str, cache_dir: str) -> str:
  """A local data_dir holding a copy of <data_dir>/<name> (data_dir on gs:// or s3://).

  TFDS reads a remote data_dir's metadata, but array_record reads local files only: the
  prepared data set is copied once into data.cache_dir, keyed by its location and its files'
  names and sizes, and reused while they stay the same.
  """
  remote = fileio.join(data_dir, name)
  files = fileio.walk_files(remote)
  if not files:
    raise CSGError(f"TFDS data set {name!r} is not prepared in data_dir {data_dir}: prepare it "
                   f"locally (`{prepare_command(name, '<local dir>')}`) and copy "
                   f"<local dir>/{name} to {remote}, or set data.data_dir to where it is prepared.")
  listing = [(rel, fileio.size(fileio.join(remote, rel))) for rel in files]
  key = cache.cache_key(source=remote, files=listing)
  root = os.path.join(os.path.expanduser(cache_dir), f"tfds-{key}")

  def download(tmp: str) -> dict:
    log(f"Copying TFDS data set {name!r} from {remote} to {root} ({len(files)} files, "
        f"{sum(n for _, n in listing) / 1e6:.1f} MB)")
    fileio.download_tree(remote, os.path.join(tmp, name))
    return {"source": remote, "files": listing}

  if cache.read_meta(root) is None:
    cache.build_atomically(root, download)
  return root


def load(cfg) -> Dataset:
  """Opens data.train_split and data.test_split of TFDS data set data.name.

  Downloads and prepares it first when it is not prepared and data.download is set.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy, optional)

  data_dir = cfg.data_dir
  if data_dir and fileio.is_remote(data_dir):
    data_dir = local_copy(data_dir, cfg.name, cfg.cache_dir)
  builder = open_builder(cfg.name, data_dir)
  where = str(builder.data_dir_root)
  if cfg.download:
    prepare(builder, cfg.name)
  roles = {"train": cfg.train_split, "test": cfg.test_split}
  sources = {}
  for role, split in roles.items():
    try:
      with quiet():
        sources[role] = builder.as_data_source(split=split)
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      with quiet():
        prepared = builder.is_prepared()
      if not prepared:
        raise CSGError(f"TFDS data set {cfg.name!r} is not prepared in data_dir {where} and "
                       "data.download is False: prepare it with "
                       f"`{prepare_command(cfg.name, where)}`, or set data.data_dir to where it "
                       "is prepared.") from e
      raise CSGError(
          f"TFDS cannot open data set {cfg.name!r} split {split!r} (data_dir={where}): "
          f"{_one_line(e)}. Check data.{role}_split and data.data_dir; csg_jax reads array_record "
          f"files: `{prepare_command(cfg.name, where)}` prepares them.") from e

  features = sources["train"].dataset_info.features
  if "image" not in features or "label" not in features:
    raise CSGError(f"TFDS data set {cfg.name!r} has features {sorted(features)}: csg_jax needs "
                   "'image' and 'label'; choose an image classification data set.")
  class_names = tuple(features["label"].names)
  height, width, channels = features["image"].shape
  if cfg.image_size is not None:
    height = width = cfg.image_size
  elif height is None or width is None:
    raise CSGError(f"TFDS data set {cfg.name!r} has images of varying size: set data.image_size "
                   "to resize them to one size.")
  # Labels are read without decoding images (what a validation split is drawn by).
  labels_only = {"image": tfds.decode.SkipDecoding()}
  return Dataset(
      name=cfg.name,
      class_names=class_names,
      image_shape=(height, width, channels),
      splits={role: TfdsSplit(sources[role], split, cfg.image_size, len(class_names),
                              functools.partial(builder.as_data_source, split=split,
                                                decoders=labels_only))
              for role, split in roles.items()},
  )
