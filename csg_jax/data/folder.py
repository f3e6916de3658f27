"""Class-folder images, from a folder or a tarball, decoded once into a memory-mapped cache.

Layout: `root/<split>/<class>/**/*.{jpg,jpeg,png}`, optionally wrapped in one top-level folder.
Class names, sorted, give the label ids. The cache holds `<role>_images.npy` (uint8 [n, H, W, 3])
and `<role>_labels.npy` per role ('train', 'test') plus `meta.json`, in a directory named by a
digest of the source's content and of the settings that change the decoded pixels.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import multiprocessing
import os
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from csg_jax.data import cache
from csg_jax.data.sources import TAR_EXTENSIONS, is_tarball
from csg_jax.data.dataset import ArraySplit, CacheInfo, Dataset, resize_image
from csg_jax import fileio
from csg_jax.errors import CSGError
from csg_jax.log import log

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1  # Bump when the decoded pixels or the file layout change.
_CHUNK_ITEMS = 512  # Images per decode job: large enough to amortise inter-process overhead,
_CHUNK_BYTES = 16 << 20  # and small enough to bound the compressed bytes in flight.
_IN_PROCESS_BELOW = 1000  # With decode_workers=0, fewer images than this decode in-process.
_PROGRESS_SECONDS = 3.0

# (role, row in that role's arrays, path inside the source, file path or encoded bytes)
_Item = tuple[str, int, str, "str | bytes"]


def load(cfg) -> Dataset:
  """Loads (building on first use) the cached arrays of a class-folder source."""
  start = time.perf_counter()
  path = os.path.abspath(os.path.expanduser(cfg.path))
  roles = {"train": cfg.train_split, "test": cfg.test_split}
  if is_tarball(path):
    listing = None  # Listing a compressed tarball costs a full read: only done when building.
    content = cache.tarball_fingerprint(path)
  else:
    listing = _list_folder(path)
    content = cache.files_fingerprint(
        (rel, size, mtime) for rel, (_, size, mtime) in listing[0].items())
  key = cache.cache_key(version=CACHE_VERSION, content=content, image_size=cfg.image_size,
                        roles=roles)
  directory = os.path.join(os.path.expanduser(cfg.cache_dir), f"folder-{key}")

  meta = cache.read_meta(directory)
  built = meta is None
  if built:
    log(f"[csg_jax.data] building cache {directory} from {cfg.path}")
    meta = cache.build_atomically(
        directory, lambda tmp: _build(tmp, cfg, path, roles, listing))
  seconds = time.perf_counter() - start
  total = sum(meta["sizes"].values())
  skipped = tuple(_display(cfg.path, rel) for rel, _ in meta["skipped"])
  if meta["skipped"] and not cfg.skip_corrupt:
    rel, reason = meta["skipped"][0]
    raise _corrupt_error(_display(cfg.path, rel), reason, len(skipped))
  verb = "built" if built else "reused"
  log(f"[csg_jax.data] {verb} cache {directory}: {total} images in {seconds:.1f} s"
      + (f", {len(skipped)} unreadable file(s) skipped" if skipped else ""))

  splits = {
      role: ArraySplit(np.load(os.path.join(directory, f"{role}_images.npy"), mmap_mode="r"),
                       np.load(os.path.join(directory, f"{role}_labels.npy")))
      for role in roles
  }
  name = os.path.basename(path.rstrip(os.sep))
  for ext in TAR_EXTENSIONS:  # Longest first: 'x.tar.gz' -> 'x'.
    if name.lower().endswith(ext):
      name = name[:-len(ext)]
      break
  return Dataset(name=name, class_names=tuple(meta["class_names"]),
                 image_shape=tuple(meta["image_shape"]), splits=splits, skipped=skipped,
                 cache=CacheInfo(path=directory, built=built, seconds=seconds))


def object_masks_path(cfg, dataset, role: str) -> str | None:
  """<data.path>/masks/<split>.npy beside the class folders, as csg-build-shapes and
  csg-build-voc-part write them (None for a tarball)."""
  del dataset
  split = {"train": cfg.train_split, "test": cfg.test_split}.get(role)
  path = os.path.expanduser(cfg.path)
  if split is None or not os.path.isdir(path):
    return None
  return os.path.join(path, "masks", f"{split}.npy")


def decode_image(source: str | bytes, size: int | None) -> np.ndarray:
  """Decodes an image file (path or bytes) to uint8 RGB [H, W, 3], resized to size x size."""
  with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
    if size is not None and image.format == "JPEG":
      # Lets libjpeg decode at a reduced scale (never below `size`): far faster for big photos.
      image.draft(image.mode, (size, size))
    ImageOps.exif_transpose(image, in_place=True)  # Camera photos store rotation in EXIF.
    return np.asarray(resize_image(_to_rgb(image), size))


def _to_rgb(image: Image.Image) -> Image.Image:
  if image.mode == "RGB":
    return image
  if image.mode.startswith("I"):  # 16/32-bit grayscale: keep the top 8 bits, not a clipped value.
    image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255)
                            .astype(np.uint8))
  if image.mode == "P" or "transparency" in image.info:
    image = image.convert("RGBA")  # Resolves the palette's transparency before it is dropped.
  return image.convert("RGB")  # Alpha is dropped: the colour under it is kept.


def _display(source: str, rel: str) -> str:
  """How a file inside the source is named to the user."""
  return f"{source}:{rel}" if is_tarball(source) else os.path.join(source, rel)


def _corrupt_error(name: str, reason: str, count: int) -> CSGError:
  more = f" (and {count - 1} other unreadable file(s))" if count > 1 else ""
  return CSGError(f"Cannot read image {name}: {reason}{more}. Fix or delete it, or set "
                  "data.skip_corrupt=True to skip unreadable images.")


def _is_image(rel: str) -> bool:
  return rel.lower().endswith(IMAGE_EXTENSIONS)


def _list_folder(root: str) -> tuple[dict[str, tuple[str, int, int]], set[str]]:
  """Image files (relative posix path -> (path, size, mtime_ns)) and folders under root."""
  files, dirs = {}, set()
  for here, subdirs, names in os.walk(root, followlinks=True):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))  # Skip .git, .cache, ...
    rel_here = os.path.relpath(here, root).replace(os.sep, "/")
    prefix = "" if rel_here == "." else rel_here + "/"
    dirs.update(prefix + d for d in subdirs)
    for name in names:
      if _is_image(name) and not name.startswith("."):  # '._x.jpg' are macOS metadata files.
        full = os.path.join(here, name)
        stat = os.stat(full)
        files[prefix + name] = (full, stat.st_size, stat.st_mtime_ns)
  return files, dirs


def _list_tar(archive: tarfile.TarFile) -> tuple[dict[str, tarfile.TarInfo], set[str]]:
  """Image members (normalised name -> member) and folders of a tarball."""
  files, dirs = {}, set()
  for member in archive.getmembers():
    rel = member.name.removeprefix("./").strip("/")
    if not rel or any(part.startswith(".") for part in rel.split("/")):
      continue
    if member.isdir():
      dirs.add(rel)
    elif member.isfile() and _is_image(rel):
      files[rel] = member
  return files, dirs


def _layout(files: Iterable[str], dirs: set[str], roles: dict[str, str],
            where: str) -> tuple[tuple[str, ...], dict[str, list[tuple[int, str]]]]:
  """Class names and, per role, (label, path) pairs sorted by class then path.

  Accepts `<split>/<class>/...` at the top, or inside one wrapping folder.
  """
  files = sorted(files)
  for rel in files:  # Tarballs need not list folders as members.
    parts = rel.split("/")
    dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
  top = {d for d in dirs if "/" not in d}
  prefix = ""
  if not set(roles.values()) <= top:
    # A single wrapping folder holding every split, e.g. 'cifar10/train', 'cifar10/test'.
    wrappers = [d for d in top if all(f"{d}/{split}" in dirs for split in roles.values())]
    if len(wrappers) == 1:
      prefix = wrappers[0] + "/"

  per_role = {}
  for role, split in roles.items():
    base = prefix + split
    if base not in dirs:
      found = sorted(d for d in dirs if d.count("/") == prefix.count("/"))
      raise CSGError(f"{where} has no {split!r} split folder (found {found[:10]}): expected "
                     f"{split}/<class>/*.jpg; set data.{role}_split to the folder's name.")
    classes = {d[len(base) + 1:] for d in dirs
               if d.startswith(base + "/") and "/" not in d[len(base) + 1:]}
    by_class = {c: [] for c in classes}
    for rel in files:
      if rel.startswith(base + "/") and "/" in rel[len(base) + 1:]:
        by_class[rel[len(base) + 1:].split("/", 1)[0]].append(rel)
    if not classes:
      raise CSGError(f"{where}: split folder {base!r} has no class folders; expected "
                     f"{base}/<class>/*.jpg.")
    if empty := sorted(c for c, rels in by_class.items() if not rels):
      raise CSGError(f"{where}: class folder {base}/{empty[0]} has no images "
                     f"(*{', *'.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
    per_role[role] = by_class

  (first, first_classes), *others = [(r, set(c)) for r, c in per_role.items()]
  for role, classes in others:
    if classes != first_classes:
      raise CSGError(
          f"{where}: the class folders of split {roles[role]!r} differ from those of "
          f"{roles[first]!r} (only in {roles[role]!r}: {sorted(classes - first_classes)}, only in "
          f"{roles[first]!r}: {sorted(first_classes - classes)}); every split needs the same "
          "classes.")
  class_names = tuple(sorted(first_classes))
  if len(class_names) < 2:
    split = roles[first]
    raise CSGError(
        f"{where}: split {split!r} has one class folder ({prefix}{split}/{class_names[0]}); a "
        "classifier needs two or more. data.path must be the folder that holds "
        f"{'/, '.join(roles.values())}/, each with one folder per class: is it one level too "
        "deep (a split folder, or one class's folder)?")
  return class_names, {
      role: [(label, rel) for label, c in enumerate(class_names) for rel in by_class[c]]
      for role, by_class in per_role.items()
  }


def _build(tmp: str, cfg, path: str, roles: dict[str, str], listing) -> dict:
  """Decodes every image of the source into arrays under `tmp`; returns the cache metadata."""
  start = time.perf_counter()
  with contextlib.ExitStack() as stack:
    if listing is None:
      try:
        archive = stack.enter_context(tarfile.open(path))
        files, dirs = _list_tar(archive)
      except (tarfile.TarError, OSError, EOFError) as e:
        raise CSGError(f"Cannot read tarball {cfg.path!r} ({e}): check the file is a complete "
                       ".tar/.tar.gz.") from e
      payload = lambda rel: archive.extractfile(files[rel]).read()
      # Members in archive order: a compressed tarball is read front to back exactly once.
      order = lambda items: sorted(items, key=lambda item: files[item[2]].offset)
    else:
      files, dirs = listing
      payload = lambda rel: files[rel][0]
      order = lambda items: items
    class_names, per_role = _layout(files.keys(), dirs, roles, cfg.path)

    items = [(role, row, rel) for role, pairs in per_role.items()
             for row, (_, rel) in enumerate(pairs)]
    height, width = _output_size(cfg.image_size, items, payload)
    out_paths = {}
    for role, pairs in per_role.items():
      out_paths[role] = os.path.join(tmp, f"{role}_images.npy")
      np.lib.format.open_memmap(out_paths[role], mode="w+", dtype=np.uint8,
                                shape=(len(pairs), height, width, 3))

    workers = cfg.decode_workers or (
        1 if len(items) < _IN_PROCESS_BELOW else len(os.sched_getaffinity(0)))
    log(f"[csg_jax.data] decoding {len(items)} images with {workers} process(es)")
    jobs = _chunks((role, row, rel, payload(rel)) for role, row, rel in order(items))

    def check(job_failures: list[tuple[str, str, str]]) -> None:
      # Called as results arrive, so a bad file stops a long build early.
      for rel, kind, reason in job_failures:
        if kind == "size":
          raise CSGError(f"Image {_display(cfg.path, rel)} is {reason}, unlike the first image "
                         f"({width}x{height}): set data.image_size to resize all images to one "
                         "size.")
        if not cfg.skip_corrupt:
          raise _corrupt_error(_display(cfg.path, rel), reason, 1)

    failures = _run_jobs(jobs, out_paths, (height, width), cfg.image_size, workers, len(items),
                         check)

  failed = {rel for rel, _, _ in failures}
  sizes = {}
  for role, pairs in per_role.items():
    keep = np.array([rel not in failed for _, rel in pairs], bool)
    labels = np.array([label for label, _ in pairs], np.int32)[keep]
    if lost := sorted(set(class_names) - {class_names[i] for i in np.unique(labels)}):
      raise CSGError(f"{cfg.path}: no readable image of class {lost[0]!r} in split "
                     f"{roles[role]!r} after skipping unreadable files: fix or add images.")
    if not keep.all():
      _drop_rows(out_paths[role], keep)
    np.save(os.path.join(tmp, f"{role}_labels.npy"), labels)
    sizes[role] = int(keep.sum())
  seconds = time.perf_counter() - start
  if failed:
    log(f"[csg_jax.data] skipped {len(failed)} unreadable image(s), e.g. "
        f"{_display(cfg.path, failures[0][0])}")
  return dict(class_names=list(class_names), image_shape=[height, width, 3], sizes=sizes,
              skipped=sorted([rel, reason] for rel, _, reason in failures),
              source=cfg.path, build_seconds=seconds)


def _output_size(size: int | None, items: list, payload) -> tuple[int, int]:
  """(H, W) of the cached images: image_size, or that of the first readable image."""
  if size is not None:
    return size, size
  for _, _, rel in items:
    try:
      return decode_image(payload(rel), None).shape[:2]
    except Exception:  # pylint: disable=broad-except  (the decode pass reports it properly)
      continue
  return 1, 1  # Nothing readable: the decode pass reports every file.


def _chunks(items: Iterator[_Item]) -> Iterator[list[_Item]]:
  chunk, nbytes = [], 0
  for item in items:
    chunk.append(item)
    nbytes += len(item[3])
    if len(chunk) >= _CHUNK_ITEMS or nbytes >= _CHUNK_BYTES:
      yield chunk
      chunk, nbytes = [], 0
  if chunk:
    yield chunk


def _run_jobs(jobs: Iterator[list[_Item]], out_paths: dict[str, str], hw: tuple[int, int],
              size: int | None, workers: int, total: int,
              check: Callable[[list[tuple[str, str, str]]], None]) -> list[tuple[str, str, str]]:
  """Decodes every job's images into the output files; returns (path, kind, reason) failures.

  `check` sees each job's failures as they arrive and may raise to stop the build.
  """
  failures, done, last = [], 0, time.perf_counter()
  start = last

  def collect(job_failures: list, count: int) -> None:
    nonlocal done, last
    check(job_failures)
    failures.extend(job_failures)
    done += count
    if time.perf_counter() - last > _PROGRESS_SECONDS and done < total:
      last = time.perf_counter()
      log(f"[csg_jax.data] decoded {done}/{total} images ({done / (last - start):.0f}/s)")

  if workers == 1:
    try:
      for job in jobs:
        collect(_decode_job(out_paths, hw, size, job), len(job))
    finally:
      _OUTPUTS.clear()
    return failures

  # 'spawn': forking a process that runs JAX's threads can deadlock the child.
  pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"))
  try:
    pending = collections.deque()
    for job in jobs:  # A bounded window of jobs keeps memory flat for big tarballs.
      pending.append((pool.submit(_decode_job, out_paths, hw, size, job), len(job)))
      if len(pending) > 2 * workers:
        future, count = pending.popleft()
        collect(future.result(), count)
    for future, count in pending:
      collect(future.result(), count)
  finally:
    pool.shutdown(cancel_futures=True)  # On an error, queued jobs need not run.
  return failures


_OUTPUTS: dict[str, np.ndarray] = {}  # Output arrays of this process, mapped once per build.


def _decode_job(out_paths: dict[str, str], hw: tuple[int, int], size: int | None,
                job: list[_Item]) -> list[tuple[str, str, str]]:
  """Decodes one chunk into the memory-mapped outputs (shared through the page cache)."""
  failures = []
  for role, row, rel, source in job:
    try:
      image = decode_image(source, size)
    except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types)
      failures.append((rel, "corrupt", f"{type(e).__name__}: {e}"))
      continue
    if image.shape[:2] != hw:
      failures.append((rel, "size", f"{image.shape[1]}x{image.shape[0]}"))
      continue
    out_path = out_paths[role]
    if out_path not in _OUTPUTS:
      _OUTPUTS[out_path] = np.load(out_path, mmap_mode="r+")
    _OUTPUTS[out_path][row] = image
  return failures


def _drop_rows(path: str, keep: np.ndarray, block: int = 4096) -> None:
  """Rewrites the .npy at `path` without the rows where keep is False, in bounded memory."""
  old = np.load(path, mmap_mode="r")
  with fileio.atomic_file(path, suffix=".npy") as new_path:
    new = np.lib.format.open_memmap(new_path, mode="w+", dtype=old.dtype,
                                    shape=(int(keep.sum()),) + old.shape[1:])
    written = 0
    for lo in range(0, len(old), block):
      rows = old[lo:lo + block][keep[lo:lo + block]]
      new[written:written + len(rows)] = rows
      written += len(rows)
    new.flush()
    del old, new
