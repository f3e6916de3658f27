r"""Builds the paper's VOC Part animal crops (128x128, object and part masks, 70/30 by image).

  csg-build-voc-part --voc_root /data/VOCdevkit/VOC2010 \
      --annotations_dir /data/pascal_part/Annotations_Part --out /data/voc_part
  csg-train --config configs/voc_part_resnet152.py --config.data.path=/data/voc_part

Inputs: the VOC 2010 trainval images (VOCtrainval_03-May-2010.tar: JPEGImages/ and
ImageSets/Main/trainval.txt) and the Pascal-Part annotations (trainval.tar.gz:
Annotations_Part/*.mat). See csg_jax/data/voc_part.py for the exact procedure.
From a checkout without `pip install -e .`: python launch/build_voc_part.py ...
"""

from absl import flags

from csg_jax import cli
from csg_jax.data import voc_part
from csg_jax.errors import CSGError
from csg_jax.log import log

_VOC_ROOT = flags.DEFINE_string("voc_root", None, "VOC 2010 folder holding JPEGImages/ (and "
                                "ImageSets/Main/trainval.txt for the released split).")
_ANNOTATIONS = flags.DEFINE_string("annotations_dir", None,
                                   "Pascal-Part Annotations_Part/ folder of .mat files.")
_OUT = flags.DEFINE_string("out", None, "Output folder (the data.path of training).")
_SIZE = flags.DEFINE_integer("size", 128, "Side of the square crops in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the 70/30 split by image (0: as released).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out folder.")


def main(argv):
  cli.start(argv)
  with cli.user_errors():
    missing = [f"--{n}" for n, v in (("voc_root", _VOC_ROOT.value),
                                     ("annotations_dir", _ANNOTATIONS.value),
                                     ("out", _OUT.value)) if not v]
    if missing:
      raise CSGError(f"{', '.join(missing)} not given: pass the VOC 2010 folder, the Pascal-Part "
                     "Annotations_Part folder and an output folder")
    meta = voc_part.build_voc_part(_VOC_ROOT.value, _ANNOTATIONS.value, _OUT.value,
                                   size=_SIZE.value, seed=_SEED.value, overwrite=_OVERWRITE.value)
  for split, counts in meta["counts"].items():
    log(f"{split}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
