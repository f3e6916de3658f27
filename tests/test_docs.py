"""The README's Python examples run as written."""

import os
import re

import pytest

from conftest import REPO

# The README's examples use the default run's workdir; the tests substitute a small trained run.
_DEFAULT_WORKDIR = "workdirs/digits_resnet8_csg"


def _python_blocks(path):
  with open(path) as f:
    return re.findall(r"^```python\n(.*?)^```", f.read(), re.S | re.M)


def test_readme_has_the_examples_this_test_runs():
  blocks = _python_blocks(os.path.join(REPO, "README.md"))
  assert len(blocks) == 2
  assert any(_DEFAULT_WORKDIR in b for b in blocks) and any("MyBackbone" in b for b in blocks)


@pytest.mark.parametrize("index", [0, 1])
def test_readme_python_block_runs(index, straight_run, capsys):
  code = _python_blocks(os.path.join(REPO, "README.md"))[index]
  exec(compile(code.replace(_DEFAULT_WORKDIR, straight_run[0]), f"README.md block {index}",
               "exec"), {"__name__": "readme"})
  printed = capsys.readouterr().out
  if _DEFAULT_WORKDIR in code:  # the inference example prints predictions, labels and G's shape
    assert printed.strip().splitlines()[-1] == "(10, 16)"  # 10 digits; K = 4 * 4 at width 4
