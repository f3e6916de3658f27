"""How numbers are written in reports and tables."""

from __future__ import annotations

import math


def number(value, digits: int = 4) -> str:
  """A float with `digits` decimals; '–' for None and NaN; anything else as str()."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
