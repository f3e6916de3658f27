"""`csg-compile` (csg_jax/cli/compile.py) from a checkout, with no install needed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from csg_jax.cli import compile as command  # pylint: disable=wrong-import-position

if __name__ == "__main__":
  command.run()
