"""The package's import graph, read from the source (every import statement,
those inside functions included): no cycle, and imports that run one way
(docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sgc_jax")

# folder -> the folders of sgc_jax it must not import. A registry package
# (`sgc_jax.methods`, whose __init__ resolves "module:class" strings) counts as
# its __init__ alone, so importing the registry is not importing the methods.
FORBIDDEN = {
    "ops": {"data", "models", "convert", "core", "methods", "evaluators", "modes", "bundle",
            "tools", "configs", "main"},
    "utils": {"data", "models", "convert", "core", "methods", "evaluators", "modes", "bundle",
              "tools", "configs", "main"},
    "runtime": {"data", "models", "convert", "core", "methods", "evaluators", "modes",
                "bundle", "tools", "configs", "main"},
    "models": {"data", "convert", "core", "methods", "evaluators", "modes", "bundle", "tools",
               "configs", "main"},
    "data": {"models", "convert", "core", "methods", "evaluators", "modes", "bundle", "tools",
             "configs", "main"},
    "convert": {"core", "methods", "evaluators", "modes", "tools", "configs", "main"},
    "bundle": {"core", "evaluators", "modes", "tools", "configs", "main"},
    "core": {"methods", "evaluators", "modes", "tools", "configs", "main"},
    "methods": {"evaluators", "modes", "tools", "configs", "main"},
    "evaluators": {"methods", "modes", "tools", "configs", "main"},
    "modes": {"tools", "configs", "main"},
}


def module_name(path: str) -> str:
  name = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


def package_modules() -> dict[str, str]:
  found = {}
  for directory, _, files in os.walk(PACKAGE):
    for file in files:
      if file.endswith(".py"):
        found[module_name(os.path.join(directory, file))] = os.path.join(directory, file)
  return found


def imported_modules(tree: ast.AST, modules: dict) -> set[str]:
  """The package modules a module imports, at any depth of its code."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from a.b import c`: c is module a.b.c where there is one, else a name in a.b
      names = [f"{node.module}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level:
      raise AssertionError("relative imports are not used in this package")
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name and name != "sgc_jax":
        found.add(name)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = package_modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      graph[name] = imported_modules(ast.parse(f.read(), path), modules) - {name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for successor in sorted(graph.get(node, ())):
      if successor not in index:
        visit(successor)
        low[node] = min(low[node], low[successor])
      elif successor in on_stack:
        low[node] = min(low[node], index[successor])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def folder(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
  a = ast.parse("from sgc_jax.models import b\n")
  b = ast.parse("def f():\n  from sgc_jax.models import a\n")
  modules = {"sgc_jax.models": "", "sgc_jax.models.a": "", "sgc_jax.models.b": ""}
  graph = {"sgc_jax.models.a": imported_modules(a, modules),
           "sgc_jax.models.b": imported_modules(b, modules)}
  assert cycles(graph) == [["sgc_jax.models.a", "sgc_jax.models.b"]]
  assert cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []


def test_no_import_cycle_inside_the_package():
  assert cycles(import_graph()) == []


def test_imports_run_one_way():
  wrong = []
  for module, imported in sorted(import_graph().items()):
    for target in sorted(imported):
      if folder(target) in FORBIDDEN.get(folder(module), ()):
        if target.count(".") == 1 and target.split(".")[1] in ("methods", "evaluators"):
          # the registries (by import path) import no method or evaluator module
          continue
        wrong.append(f"{module} -> {target}")
  assert wrong == []


@pytest.mark.parametrize("registry", ["sgc_jax.methods", "sgc_jax.evaluators"])
def test_registry_packages_import_none_of_their_members(registry):
  graph = import_graph()
  assert not {m for m in graph[registry] if m.startswith(registry + ".")}


def test_the_library_never_imports_the_tools():
  importers = [f"{module} -> {target}" for module, imported in import_graph().items()
               if folder(module) != "tools" for target in imported if folder(target) == "tools"]
  assert importers == []


def _top_level_names(tree: ast.AST) -> set[str]:
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names |= {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
  return names


def test_every_import_of_a_package_name_resolves():
  """`from sgc_jax.X import Y` names a module X of the package and a Y it
  defines (or a submodule): a stale path after a move fails here, in the
  files that no other test imports too (the tools)."""
  modules = package_modules()
  trees = {name: ast.parse(open(path).read(), path) for name, path in modules.items()}
  test_files = [os.path.join(ROOT, "tests", f) for f in os.listdir(os.path.join(ROOT, "tests"))
                if f.endswith(".py")]
  sources = list(trees.items()) + [(path, ast.parse(open(path).read(), path))
                                   for path in test_files]
  stale = []
  for where, tree in sources:
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and (
          node.module == "sgc_jax" or node.module.startswith("sgc_jax.")):
        if node.module not in modules:
          stale.append(f"{where}: no module {node.module}")
          continue
        for alias in node.names:
          if (f"{node.module}.{alias.name}" not in modules
              and alias.name not in _top_level_names(trees[node.module])):
            stale.append(f"{where}: {node.module} has no {alias.name}")
      elif isinstance(node, ast.Import):
        stale += [f"{where}: no module {alias.name}" for alias in node.names
                  if alias.name.startswith("sgc_jax") and alias.name not in modules]
  assert stale == []
