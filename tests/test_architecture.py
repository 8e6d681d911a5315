"""The package's shape: imports flow one way, down the layer table, with no circle, and no
module reaches into another's privates.

Every import counts, including those inside functions, since a lazy import is still a circle.
"""

import ast
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "attend_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported_modules(tree: ast.AST, current: str) -> set[str]:
  """attend_jax modules that ``tree`` imports; ``from pkg import name`` counts as the submodule
  ``pkg.name`` when there is one, else as ``pkg``."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "attend_jax"}
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:  # Relative: resolve against the current package.
        package = current.split(".")
        if MODULES[current].name != "__init__.py":
          package = package[:-1]
        module = ".".join(package[:len(package) - node.level + 1] + ([module] if module else []))
      if module.split(".")[0] != "attend_jax":
        continue
      for alias in node.names:
        sub = f"{module}.{alias.name}"
        found.add(sub if sub in MODULES else module)
  return {m for m in found if m in MODULES and m != current}


def _graph() -> dict[str, set[str]]:
  return {name: _imported_modules(ast.parse(path.read_text()), name)
          for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


# The layers, top to bottom (docs/architecture.md). A module may import its own layer and those
# below it, never one above. Each entry is a top-level module or package of attend_jax.
LAYERS = (
    ("entry points", ("main", "predict", "evaluate", "cli")),
    ("applications", ("inference", "convert", "dicom_out", "dicomweb")),
    ("drivers", ("train", "config_check")),
    ("runs", ("run", "checkpoint")),
    ("tasks", ("tasks",)),
    ("components", ("models", "data", "eval", "losses")),
    ("base", ("box_ops", "geometry", "export", "hosts", "paths", "errors", "progress")),
)
_RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def _layer(module: str) -> int | None:
  """The rank (0 = top) of ``attend_jax.<top>...``; None for the package itself or a module
  the table does not place."""
  parts = module.split(".")
  return _RANK.get(parts[1]) if len(parts) > 1 else None


def _against_layers(graph: dict[str, set[str]]) -> list[str]:
  """Every import of a module in a layer above the importer's."""
  out = []
  for module, imported in sorted(graph.items()):
    for target in sorted(imported):
      if None not in (_layer(module), _layer(target)) and _layer(target) < _layer(module):
        out.append(f"{module} -> {target} ({LAYERS[_layer(module)][0]} may not import"
                   f" {LAYERS[_layer(target)][0]})")
  return out


def test_every_module_has_a_layer():
  unplaced = sorted(m for m in MODULES if m != "attend_jax" and _layer(m) is None)
  assert unplaced == [], f"add these to LAYERS: {unplaced}"


def test_imports_flow_down_the_layers():
  assert _against_layers(_graph()) == []


def test_the_layer_checker_catches_imports_that_climb():
  """The imports found in review (P14), as they were. The four that climb are caught;
  train.checkpoint -> data.errors went down a layer and passes."""
  old = {"attend_jax.eval.loop": {"attend_jax.tasks.base", "attend_jax.eval.metrics"},
         "attend_jax.run": {"attend_jax.train.checkpoint", "attend_jax.tasks"},
         "attend_jax.models.build": {"attend_jax.convert.dinov2", "attend_jax.models.vit"},
         "attend_jax.paths": {"attend_jax.data.errors"},
         "attend_jax.train.checkpoint": {"attend_jax.data.errors"}}
  assert [line.split(" (")[0] for line in _against_layers(old)] == [
      "attend_jax.eval.loop -> attend_jax.tasks.base",
      "attend_jax.models.build -> attend_jax.convert.dinov2",
      "attend_jax.paths -> attend_jax.data.errors",
      "attend_jax.run -> attend_jax.train.checkpoint"]


def test_the_package_has_no_import_circle():
  assert _cycles(_graph()) == []


def test_the_circle_finder_finds_circles():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def _private_uses(tree: ast.AST) -> list[str]:
  """``from attend_jax.x import _name`` and ``mod._name`` where ``mod`` is an attend_jax module
  bound by an import."""
  modules, uses = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("attend_jax"):
          modules.add(a.asname or a.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attend_jax"):
      for a in node.names:
        if a.name.startswith("_"):
          uses.append(f"from {node.module} import {a.name}")
        elif f"{node.module}.{a.name}" in MODULES:
          modules.add(a.asname or a.name)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in modules and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      uses.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
  return uses


def _sources():
  for path in sorted([*PACKAGE.rglob("*.py"), *(REPO / "tools").glob("*.py"),
                      *(REPO / "configs").glob("*.py")]):
    yield path.relative_to(REPO), path.read_text()
  for path in sorted((REPO / "notebooks").glob("*.ipynb")):
    cells = json.loads(path.read_text())["cells"]
    yield path.relative_to(REPO), "\n".join("".join(c["source"]) for c in cells
                                            if c["cell_type"] == "code")


@pytest.mark.parametrize("where,source", list(_sources()), ids=lambda x: str(x)[:40])
def test_no_private_name_is_used_across_modules(where, source):
  assert _private_uses(ast.parse(source)) == [], where


def test_the_private_use_finder_finds_them():
  code = ("from attend_jax.train import trainer\nfrom attend_jax.data.prepare import _work\n"
          "trainer._forward(1)\ntrainer.__name__\n")
  assert _private_uses(ast.parse(code)) == ["from attend_jax.data.prepare import _work",
                                            "trainer._forward (line 3)"]
