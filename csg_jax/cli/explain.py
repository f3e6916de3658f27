r"""Explains a trained run's predictions filter by filter, and draws its filter atlas.

  csg-explain --workdir workdirs/digits_resnet8_csg --indices 0,1,2      # test-split images
  csg-explain --workdir W --images cat.png dog.jpg                       # image files
  csg-explain --workdir W --atlas                                        # every filter's top images

Per image, <out>/<name>.png: the image, the CAM of the predicted class, the top class
probabilities, the filters' contributions W[c, k]·f_k to the predicted logit, and the activation
maps of the filters that gave most, with the class each serves by the gate (CSG runs) and by
mutual information; <out>/explanations.json holds every number. --atlas: <out>/atlas_<page>.png,
each filter's top-k test images by mean activation, filters grouped by class, with the share of
those images that belong to the filter's class (purity); <out>/atlas.json. The MI classes come
from <workdir>/eval, which csg-evaluate writes: it is run first when that is missing or older
than the checkpoint. From a checkout without `pip install -e .`: python launch/explain.py ...
"""

from absl import flags

from csg_jax import cli
from csg_jax import fileio
from csg_jax.errors import CSGError
from csg_jax.log import log

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by csg-train.", required=True)
_INDICES = flags.DEFINE_list("indices", [], "Test-split images to explain, by index: 0,1,2.")
_IMAGES = flags.DEFINE_multi_string(
    "images", [], "Image files to explain (any size: resized to the run's images); more files "
    "may follow as plain arguments: --images a.png b.png.")
_ATLAS = flags.DEFINE_bool("atlas", False, "Draw the filter atlas: each filter's top test images.")
_TOP_K = flags.DEFINE_integer("top_k", 8, "Atlas: top test images per filter.")
_FILTERS_PER_PAGE = flags.DEFINE_integer("filters_per_page", 16, "Atlas: filters per PNG page.")
_NUM_FILTERS = flags.DEFINE_integer("num_filters", 5, "Explanations: how many of the filters "
                                    "that contribute most are shown with their maps.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <workdir>/explain).")


def _indices(values) -> list:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise CSGError(f"--indices={','.join(values)}: give test-split indices as integers, e.g. "
                   "--indices 0,1,2") from None


def _refuse_early(workdir: str, indices) -> None:
  """What the workdir's own files refuse (no checkpoint; an index past the test split's size in
  dataset.json), before the seconds of loading JAX and the run; loading checks them again."""
  if not fileio.exists(fileio.join(workdir, "config.json")):
    return  # not a workdir: loading it says so
  if not any(d.isdigit() for d in fileio.listdir(fileio.join(workdir, "checkpoints"))):
    raise CSGError(f"{workdir!r} holds no checkpoint yet; train it first with launch/train.py")
  dataset_json = fileio.join(workdir, "dataset.json")
  if indices and fileio.exists(dataset_json):
    size = fileio.read_json(dataset_json)["split_sizes"]["test"]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
      raise CSGError(f"test-split index {bad[0]} is out of range: the test split has {size} "
                     f"images (0 to {size - 1})")


def _percent(share) -> str:
  return "n/a" if share is None else f"{100 * share:.0f} %"


def main(argv):
  cli.start(argv[:1])  # plain arguments are image files
  with cli.user_errors():
    files = list(_IMAGES.value) + list(argv[1:])
    indices = _indices(_INDICES.value)
    if not (indices or files or _ATLAS.value):
      raise CSGError("nothing to do: give --indices 0,1,2, --images FILE ... or --atlas")
    for name, flag in (("top_k", _TOP_K), ("filters_per_page", _FILTERS_PER_PAGE),
                       ("num_filters", _NUM_FILTERS)):
      if flag.value < 1:
        raise CSGError(f"--{name}={flag.value}: use a positive integer")
    for path in files:  # before the seconds of loading JAX and the run
      if not fileio.exists(path):
        raise CSGError(f"image file {path!r} does not exist")
    _refuse_early(_WORKDIR.value, indices)
    from csg_jax.evaluation import explain_report  # pylint: disable=g-import-not-at-top  (JAX)
    written = explain_report.explain_workdir(
        _WORKDIR.value, indices=indices, files=files, atlas=_ATLAS.value, out=_OUT.value,
        top_k=_TOP_K.value, filters_per_page=_FILTERS_PER_PAGE.value,
        num_filters=_NUM_FILTERS.value)
  parts = []
  # "gate" in the written figures is the method's class matrix: CSG's gate, PICNN's Θ.
  names = {"gate": written["class_label"] or "gate", "mi": "MI"}
  if "explanations" in written:
    shares = written["top3_filters_of_predicted_class"]
    parts.append(f"{written['explanations']} explanation(s), top-3 filters serving the "
                 f"predicted class: " + ", ".join(f"by {names[by]} {_percent(shares.get(by))}"
                                                  for by in ("gate", "mi")))
  if "atlas" in written:
    purity = ", ".join(f"by {names[by]} {p:.2f}"
                       for by, p in written["atlas"]["mean_purity"].items())
    parts.append(f"atlas on {written['atlas']['pages']} page(s), mean purity {purity}")
  log(f"{written['title']}: {'; '.join(parts)}; in {written['out']}")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
