"""`csg-prepare-tfds` (csg_jax/cli/prepare_tfds.py) from a checkout, with no install needed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from csg_jax.cli import prepare_tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  prepare_tfds.run()
