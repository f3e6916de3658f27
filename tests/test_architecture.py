"""The import direction of docs/architecture.md, checked on the code: every import of a csg_jax
module (at the top of a file or inside a function) points to the same layer or one below, and
the modules import each other without a cycle."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "csg_jax")

# From the bottom up. A module may import its own layer and the layers below it.
LAYERS = (
    ("core", ("errors", "log", "text", "fileio", "gate", "plan", "losses", "models", "optimizer",
              "methods",
              "sharding", "platforms", "torch_import", "data", "config", "configs", "__init__")),
    ("runs", ("runs",)),
    ("evaluation", ("evaluation",)),
    ("training", ("training",)),
    ("experiments", ("experiments",)),
    ("cli", ("cli",)),
)


def _modules():
  """{dotted module name: path} of every module of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(
            folder, name)
  return out


def _imports(path, module, modules):
  """The csg_jax modules that `module` imports anywhere in its file: `from csg_jax.x import y`
  is csg_jax.x.y when that is a module, else csg_jax.x."""
  tree = ast.parse(open(path).read())
  is_package = path.endswith("__init__.py")
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the importing module's package
        parts = module.split(".")[:len(module.split(".")) - node.level + is_package]
        base = ".".join(parts + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    out.update(n for n in names if n.split(".")[0] == "csg_jax" and n in modules)
  out.discard(module)
  return out


def _layer(module):
  top = module.split(".")[1] if "." in module else "__init__"
  return next(i for i, (_, tops) in enumerate(LAYERS) if top in tops)


def _graph():
  modules = _modules()
  return {m: _imports(p, m, modules) for m, p in modules.items()}


def test_every_module_has_a_layer():
  for module in _graph():
    _layer(module)  # StopIteration names a module no layer holds


def test_imports_point_down():
  upward = sorted(f"{m} ({LAYERS[_layer(m)][0]}) imports {i} ({LAYERS[_layer(i)][0]})"
                  for m, imported in _graph().items() for i in imported
                  if _layer(i) > _layer(m))
  assert not upward, "\n".join(upward)


def test_evaluation_never_imports_training_and_only_the_cli_imports_experiments():
  graph = _graph()
  for module, imported in graph.items():
    if module.startswith("csg_jax.evaluation"):
      assert not any(i.startswith("csg_jax.training") for i in imported), module
    if not module.startswith(("csg_jax.cli", "csg_jax.experiments")):
      assert not any(i.startswith("csg_jax.experiments") for i in imported), module
  # The checker sees the imports it must: these edges exist.
  assert "csg_jax.experiments.compare" in graph["csg_jax.cli.compare"]
  assert "csg_jax.evaluation.evaluators" in graph["csg_jax.training.loop"]


def _cycle(graph):
  """One import cycle of `graph` as a list of modules (first == last), or None."""
  state, path = {}, []

  def visit(module):
    state[module] = "open"
    path.append(module)
    for nxt in sorted(graph.get(module, ())):
      if state.get(nxt) == "open":
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    path.pop()
    state[module] = "done"
    return None

  for module in sorted(graph):
    if module not in state and (found := visit(module)):
      return found
  return None


def test_no_import_cycle():
  cycle = _cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path):
  """Planted: evaluation importing training, and a pair importing each other."""
  modules = {"csg_jax.evaluation.a": "", "csg_jax.training.loop": "", "csg_jax.gate": ""}
  source = tmp_path / "a.py"
  source.write_text("def f():\n  from csg_jax.training import loop\n")
  imported = _imports(str(source), "csg_jax.evaluation.a", modules)
  assert imported == {"csg_jax.training.loop"}
  assert _layer("csg_jax.training.loop") > _layer("csg_jax.evaluation.a")
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "d": {"a", "b"}}) is None
