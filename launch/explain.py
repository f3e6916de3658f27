"""`csg-explain` (csg_jax/cli/explain.py) from a checkout, with no install needed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from csg_jax.cli import explain  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  explain.run()
