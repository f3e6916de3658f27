r"""Downloads and prepares a TFDS data set as ArrayRecord files, the format csg_jax reads.

  csg-prepare-tfds --name=cifar10 --data_dir=data/tfds
  csg-train --config configs/cifar10_resnet20.py --config.data.data_dir=data/tfds

Preparing runs TFDS's builder for the data set, which for most image data sets needs TensorFlow:
install it with `pip install -e ".[tfds]"` (training reads the prepared files without it).
Run it once before a multi-process run, whose processes should not all prepare at once.
It downloads the data set's files: without internet access it says so within seconds. Then
prepare it on a machine that has access and copy <data_dir>/<name> over. A failed attempt
removes what it wrote under --data_dir, except downloads that finished (the next one reuses them).
From a checkout without `pip install -e .`: python launch/prepare_tfds.py ...
"""

import time

from absl import flags

from csg_jax import cli
from csg_jax.data import tfds_source
from csg_jax.log import log

_NAME = flags.DEFINE_string("name", None, "TFDS data set name (data.name), e.g. cifar10.",
                            required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write it (data.data_dir); default: "
                                "TFDS's, $TFDS_DATA_DIR or ~/tensorflow_datasets.")


def main(argv):
  cli.start(argv)
  with cli.user_errors():
    start = time.perf_counter()
    builder = tfds_source.open_builder(_NAME.value, _DATA_DIR.value)
    tfds_source.prepare(builder, _NAME.value)
  sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
  log(f"{_NAME.value} prepared as array_record in {builder.data_dir} ({sizes} examples; "
      f"{time.perf_counter() - start:.1f} s); train on it with --config.data.source=tfds "
      f"--config.data.name={_NAME.value} --config.data.data_dir={builder.data_dir_root}")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
