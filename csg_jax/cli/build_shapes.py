r"""Generates the synthetic shapes data set (6 classes, exact object masks) as an image folder.

  csg-build-shapes --root data/shapes32 --num_train 4000 --num_test 1000
  csg-train --config configs/shapes.py

See csg_jax/data/shapes.py for what is drawn. From a checkout without `pip install -e .`:
python launch/build_shapes.py ...
"""

import time

from absl import flags

from csg_jax import cli
from csg_jax.data import shapes
from csg_jax.log import log

_ROOT = flags.DEFINE_string("root", None, "Output folder (the data.path of training).",
                            required=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "Training images.")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "Test images.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Side of the square images in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the drawing.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace other content at --root.")


def main(argv):
  cli.start(argv)
  with cli.user_errors():
    start = time.perf_counter()
    meta = shapes.write_shapes_dataset(_ROOT.value, num_train=_NUM_TRAIN.value,
                                       num_test=_NUM_TEST.value, image_size=_IMAGE_SIZE.value,
                                       seed=_SEED.value, overwrite=_OVERWRITE.value)
  log(f"shapes data set at {_ROOT.value}: {meta['num_train']} train / {meta['num_test']} test "
      f"images of {meta['image_size']}x{meta['image_size']}, classes "
      f"{', '.join(shapes.CLASS_NAMES)}; train mean {meta.get('mean')} std {meta.get('std')} "
      f"({time.perf_counter() - start:.1f} s)")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
