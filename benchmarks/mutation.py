r"""Mutation testing of the core modules: plant one small bug at a time, run the tests that
cover the module, and count the mutants the suite catches (kills).

Mutants are made from the code's syntax tree, one change each: an arithmetic operator swapped
(+ and -, * and /), a comparison loosened or flipped (< and <=, == and !=), a number changed
(0 and 1, n to n + 1, x to 2x), True and False, `and` and `or`, a `not` or a unary minus
dropped, max and min (argmax and argmin, maximum and minimum), sum and mean. Code inside
`raise` statements (error messages) is left alone. Each mutant runs in its own copy of the
checkout, with the module's test files and `pytest -x` (a mutant is killed at the first failure;
one that runs past the timeout counts as killed too).

  python benchmarks/mutation.py --list                       # the mutants, nothing run
  python benchmarks/mutation.py                              # every core module, 2 workers
  python benchmarks/mutation.py --modules gate,losses --workers 1
  python benchmarks/mutation.py --only gate:27,plan:43            # re-check some survivors

Prints a line per mutant, the survivors, the score per module and, last, one JSON object.
Takes about 40 minutes on 2 CPU cores; the results are in benchmarks/RESULTS.md.
"""

import argparse
import ast
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Module -> the test files that are meant to catch a bug in it.
MODULES = {
    "gate": ("csg_jax/gate.py", ("tests/test_gate.py", "tests/test_optimizer.py",
                                 "tests/test_objective.py")),
    "losses": ("csg_jax/losses.py", ("tests/test_objective.py",)),
    "optimizer": ("csg_jax/optimizer.py", ("tests/test_optimizer.py", "tests/test_objective.py")),
    "plan": ("csg_jax/plan.py", ("tests/test_plan.py", "tests/test_optimizer.py")),
    "attacks": ("csg_jax/evaluation/attacks.py", ("tests/test_attacks.py",
                                                  "tests/test_std_path.py")),
    "detection": ("csg_jax/evaluation/detection.py", ("tests/test_detection.py",)),
}
_COPIED = ("csg_jax", "tests", "configs", "launch", "setup.cfg", "pyproject.toml")

_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
           ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
_CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
           ast.IsNot: ast.Is}
_NAMES = {"max": "min", "min": "max", "maximum": "minimum", "minimum": "maximum",
          "argmax": "argmin", "argmin": "argmax", "sum": "mean", "mean": "sum"}


def _variants(node):
  """The mutated copies of one node (each a single change), with a short description."""
  if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
    yield ast.BinOp(node.left, _BINOPS[type(node.op)](), node.right), "operator"
  elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
    yield ast.Compare(node.left, [_CMPOPS[type(node.ops[0])]()], node.comparators), "comparison"
  elif isinstance(node, ast.BoolOp):
    yield ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values), \
        "boolean operator"
  elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
    yield node.operand, "unary operator dropped"
  elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
    yield ast.Constant(not node.value), "boolean"
  elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
    v = node.value
    if isinstance(v, int):
      yield ast.Constant(1 if v == 0 else (0 if v == 1 else v + 1)), "number"
    else:
      yield ast.Constant(1.0 if v == 0 else 2 * v), "number"
  elif isinstance(node, ast.Attribute) and node.attr in _NAMES:
    yield ast.Attribute(node.value, _NAMES[node.attr], node.ctx), "function"
  elif isinstance(node, ast.Name) and node.id in ("max", "min"):
    yield ast.Name(_NAMES[node.id], node.ctx), "function"


def _skipped_spans(tree):
  """Line spans not mutated: raise statements and docstrings."""
  spans = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Raise):
      spans.append((node.lineno, node.end_lineno))
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body and \
        isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
      spans.append((node.body[0].lineno, node.body[0].end_lineno))
  return spans


def mutants(path):
  """[(line, col, end_line, end_col, new_text, description, old_text)] for one source file."""
  source = open(os.path.join(REPO, path)).read()
  tree = ast.parse(source)
  skipped = _skipped_spans(tree)
  out = []
  for node in ast.walk(tree):
    if not hasattr(node, "lineno") or any(a <= node.lineno <= b for a, b in skipped):
      continue
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      continue
    old = ast.get_source_segment(source, node)
    if old is None:
      continue
    for new, what in _variants(node):
      text = ast.unparse(new)
      if "\n" in old:
        text = f"({text})"  # a multi-line expression becomes one line inside brackets
      out.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, text,
                  what, " ".join(old.split())))
  return sorted(out)


def _apply(source, mutant):
  """The source with one mutant's span replaced (ast offsets count UTF-8 bytes)."""
  line, col, end_line, end_col, text = mutant[:5]
  data = source.encode()
  lines = data.splitlines(keepends=True)

  def offset(ln, c):
    return sum(len(l) for l in lines[:ln - 1]) + c

  return (data[:offset(line, col)] + text.encode() + data[offset(end_line, end_col):]).decode()


def _make_copy(root):
  for name in _COPIED:
    src = os.path.join(REPO, name)
    dst = os.path.join(root, name)
    if os.path.isdir(src):
      shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    elif os.path.exists(src):
      shutil.copy(src, dst)


def _run_tests(root, tests, timeout):
  env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
  start = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    status = "survived" if proc.returncode == 0 else "killed"
    if proc.returncode not in (0, 1):  # collection or import error: the mutant broke the module
      status = "killed"
  except subprocess.TimeoutExpired:
    status = "killed (timeout)"
  return status, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--modules", default=",".join(MODULES),
                      help=f"comma-separated subset of {', '.join(MODULES)}")
  parser.add_argument("--workers", type=int, default=2, help="mutants tested at once")
  parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
  parser.add_argument("--only", default="",
                      help="comma-separated MODULE:LINE, e.g. gate:27,plan:43: only the mutants "
                      "on those lines (to re-check survivors after adding tests)")
  parser.add_argument("--list", action="store_true", help="list the mutants and stop")
  args = parser.parse_args(argv)
  names = [m.strip() for m in args.modules.split(",") if m.strip()]
  unknown = [m for m in names if m not in MODULES]
  if unknown:
    parser.error(f"unknown modules {unknown}; choose from {', '.join(MODULES)}")
  only = {tuple(item.strip().split(":")) for item in args.only.split(",") if item.strip()}
  jobs = [(name, m) for name in names for m in mutants(MODULES[name][0])
          if not only or (name, str(m[0])) in only]
  print(f"{len(jobs)} mutants in {', '.join(names)}; load average {os.getloadavg()[0]:.2f}",
        flush=True)
  if args.list:
    for name, m in jobs:
      print(f"{MODULES[name][0]}:{m[0]}  {m[6]}  ->  {m[4]}  ({m[5]})")
    return 0

  workdirs = [tempfile.mkdtemp(prefix=f"mutation-{i}-") for i in range(args.workers)]
  for root in workdirs:
    _make_copy(root)
  for name in names:  # the unmutated tests must pass, or every mutant would look killed
    status, seconds = _run_tests(workdirs[0], MODULES[name][1], args.timeout)
    if status != "survived":
      print(f"error: the tests of {name} fail without any mutation; fix them first",
            file=sys.stderr)
      return 1
    print(f"baseline {name}: tests pass in {seconds:.0f} s", flush=True)

  free = list(workdirs)
  results = []

  def run(job):
    name, m = job
    root = free.pop()
    path = os.path.join(root, MODULES[name][0])
    original = open(path).read()
    try:
      with open(path, "w") as f:
        f.write(_apply(original, m))
      status, seconds = _run_tests(root, MODULES[name][1], args.timeout)
    finally:
      with open(path, "w") as f:
        f.write(original)
      free.append(root)
    return name, m, status, seconds

  start = time.time()
  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    for i, (name, m, status, seconds) in enumerate(pool.map(run, jobs)):
      results.append({"module": name, "file": MODULES[name][0], "line": m[0], "kind": m[5],
                      "original": m[6], "mutant": m[4], "status": status})
      print(f"[{i + 1}/{len(jobs)}] {status:>16}  {MODULES[name][0]}:{m[0]}  {m[6]}  ->  "
            f"{m[4]}  ({seconds:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)
  for root in workdirs:
    shutil.rmtree(root, ignore_errors=True)

  print(f"\n{len(results)} mutants in {(time.time() - start) / 60:.0f} min")
  scores = {}
  for name in names:
    rows = [r for r in results if r["module"] == name]
    killed = sum(r["status"] != "survived" for r in rows)
    scores[name] = {"mutants": len(rows), "killed": killed,
                    "score": killed / len(rows) if rows else None}
    print(f"  {name}: {killed}/{len(rows)} killed")
  survivors = [r for r in results if r["status"] == "survived"]
  print("survivors:")
  for r in survivors:
    print(f"  {r['file']}:{r['line']}  {r['original']}  ->  {r['mutant']}")
  print(json.dumps({"scores": scores, "survivors": survivors}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
