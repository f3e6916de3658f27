"""The `config.data` sub-config: every data field with its default and comment, and its
validation (the per-source parts from the source's entry in sources.SOURCES)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict

from csg_jax.data import sources
from csg_jax.errors import CSGError

class Unset:
  """The default of a field with no value: a typed placeholder (`config_dict.placeholder`)."""

  def __init__(self, kind: type):
    self.kind = kind


# (field, default, comment): every data field. A source's own values of these defaults, and the
# fields only some sources read, are in its entry of sources.SOURCES.
FIELDS = (
    ("source", "digits",
     "Where examples come from: " + ", ".join(repr(s) for s in sources.SOURCES) + "."),
    ("path", Unset(str),
     "(folder) A folder or tarball of <split>/<class>/*.jpg; (voc_part_released) processed/'s "
     "parent."),
    ("name", "cifar10", "(tfds) TFDS data set name, e.g. 'cifar10' or 'imagenet2012'."),
    ("data_dir", Unset(str), "(tfds) Local or gs:// data dir; None: TFDS default."),
    ("download", True, "(tfds) Let TFDS download and prepare the data set when data_dir lacks it."),
    ("train_split", "train", "(folder, tfds) Split (sub-folder or TFDS split) used for training."),
    ("test_split", "test", "(folder, tfds) Split (sub-folder or TFDS split) used for evaluation."),
    ("test_fraction", 0.2, "(digits) Fraction held out, stratified, with a fixed seed, as 'test'."),
    ("validation_fraction", 0.0,
     "Share of each train class held out (seed: config.seed) as 'val', evaluated in training; "
     "0: none."),
    ("cache_dir", "~/.cache/csg_jax",
     "(folder, voc_part_released; tfds on gs:// or s3://) Local cache, keyed by content."),
    ("decode_workers", 0, "(folder) Decoding processes; 0: one per CPU core, 1: in-process."),
    ("skip_corrupt", False,
     "(folder) Skip unreadable images (and report them) instead of failing."),
    ("image_size", Unset(int), "Square side images are resized to; None: keep."),
    ("num_classes", Unset(int), "If set, the data must have this many classes."),
    ("crop_padding", 4, "Train: random crop after zero-padding by this many px."),
    ("flip", True, "Train: random horizontal flip (False for digits: a flipped digit is wrong)."),
    ("random_resized_crop", False, "Train: ImageNet-style random-resized crop (no crop_padding)."),
    ("rrc_scale", (0.08, 1.0), "Random-resized crop: range of the crop's area fraction."),
    ("rrc_ratio", (3 / 4, 4 / 3), "Random-resized crop: range of the crop's aspect ratio (w/h)."),
    ("mean", (),
     "Per-channel mean (0..1) to subtract; empty: the data set's own (the source's known values, "
     "else measured on the training split, up to 10 000 images; dataset.json records them)."),
    ("std", (), "Per-channel std (0..1) to divide by; empty: the data set's own (see mean)."),
    ("prefetch", 2, "Batches prepared ahead in the background; 0: none."),
    ("batch_workers", 1,
     ("Threads preparing those batches in parallel (>1 on hosts feeding accelerators); each "
      "batch depends only on its step, so any count gives the same batches.")),
)


def field_comments() -> dict[str, str]:
  """{field: its one-line comment} of every data field."""
  return {name: comment for name, _, comment in FIELDS}


def default_config(source: str = "digits") -> ml_collections.ConfigDict:
  """Returns the data config with every field, defaulted for `source`.

  All sources share one set of fields so that `--config.data.source=...` can switch between them
  on the command line; fields a source does not use are ignored by it.
  """
  entry = sources.get(source)
  c = ml_collections.ConfigDict()
  for name, default, _ in FIELDS:
    default = entry.defaults.get(name, default)
    c[name] = config_dict.placeholder(default.kind) if isinstance(default, Unset) else default
  c.source = source
  return c


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises CSGError naming the first bad field of a data config and how to fix it."""
  source = sources.get(cfg.get("source"))
  known = set(default_config(source.name).keys())
  given = set(cfg.keys())
  if unknown := sorted(given - known):
    raise CSGError(f"Unknown data config field(s) {unknown} (a typo?); known fields: "
                   f"{sorted(known)}.")
  if missing := sorted(known - given):
    raise CSGError(f"data config lacks field(s) {missing}; start from "
                   f"csg_jax.data.default_config({source.name!r}).")

  for field in ("flip", "random_resized_crop", "skip_corrupt", "download"):
    if not isinstance(cfg[field], bool):
      raise CSGError(f"data.{field} is {cfg[field]!r}: set it to True or False.")
  for field in ("crop_padding", "decode_workers", "prefetch"):
    _check_int(cfg, field, minimum=0)
  _check_int(cfg, "batch_workers", minimum=1)
  for field in ("image_size", "num_classes"):
    if cfg[field] is not None:
      _check_int(cfg, field, minimum=1)
  for field in ("train_split", "test_split", "cache_dir", "name"):
    if not isinstance(cfg[field], str) or not cfg[field]:
      raise CSGError(f"data.{field} is {cfg[field]!r}: set it to a non-empty string.")
  if cfg.train_split == cfg.test_split:
    raise CSGError(f"data.train_split and data.test_split are both {cfg.test_split!r}: "
                   "evaluate on a different split.")

  mean = _floats(cfg, "mean", allow_empty=True)
  std = _floats(cfg, "std", allow_empty=True)
  if len(mean) != len(std):
    raise CSGError(f"data.mean has {len(mean)} values but data.std has {len(std)}: "
                   "give one value per channel in both, or leave both empty.")
  if std and min(std) <= 0:
    raise CSGError(f"data.std is {std}: every value must be > 0.")
  if not 0 < cfg.test_fraction < 1:
    raise CSGError(f"data.test_fraction is {cfg.test_fraction}: set it between 0 and 1.")
  fraction = cfg.validation_fraction
  if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
    raise CSGError(f"data.validation_fraction is {fraction!r}: set it to a number in [0, 1), "
                   "e.g. 0.1 to tune on a tenth of the training images (0: no validation split).")

  if cfg.random_resized_crop:
    if cfg.crop_padding:
      raise CSGError("data.random_resized_crop and data.crop_padding are both set: "
                     "use one crop augmentation (set crop_padding=0 for random-resized crop).")
    lo, hi = _pair(cfg, "rrc_scale")
    if not 0 < lo <= hi <= 1:
      raise CSGError(f"data.rrc_scale is {(lo, hi)}: need 0 < low <= high <= 1.")
    lo, hi = _pair(cfg, "rrc_ratio")
    if not 0 < lo <= hi:
      raise CSGError(f"data.rrc_ratio is {(lo, hi)}: need 0 < low <= high.")

  if source.check is not None:
    source.check(cfg)


def _check_int(cfg, field: str, minimum: int) -> None:
  value = cfg[field]
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise CSGError(f"data.{field} is {value!r}: set it to an integer >= {minimum}.")


def _floats(cfg, field: str, allow_empty: bool = False) -> tuple[float, ...]:
  value = cfg[field]
  if (not isinstance(value, Sequence) or isinstance(value, str) or not (value or allow_empty)
      or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
    raise CSGError(f"data.{field} is {value!r}: set it to a tuple of numbers, one per channel.")
  return tuple(float(v) for v in value)


def _pair(cfg, field: str) -> tuple[float, float]:
  value = _floats(cfg, field)
  if len(value) != 2:
    raise CSGError(f"data.{field} is {value!r}: give exactly two numbers (low, high).")
  return value
