"""The package's layers (docs/architecture.md draws the same list): a module imports only modules of
its own layer or of a layer below, and no import goes round in a circle.

Every import counts: at the top of a module, inside a function, or under ``TYPE_CHECKING``.
Importing ``a.b.c`` also runs the packages ``a.b`` (its ``__init__``), so those count as imported
too, except the importing module's own packages (already running) and the root package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlsd_kernels"
PACKAGE = "rlsd_kernels"

# Bottom to top. A module not named here is in the layer of its nearest named package.
LAYERS = [
    ["math"],                                      # per-token functions of tensors and scalars
    ["checks"],                                    # argument checks
    ["options"],                                   # RLSDOptions
    ["tokens"],                                    # token inputs, rows, token losses, token terms
    ["ops.base", "ops.gemm"],                      # the backend protocol (HeadCall), the chunk GEMMs
    ["ops"],                                       # the backends and their registry (ops/__init__)
    ["autograd"],                                  # the losses' autograd (custom ops)
    ["api", "reference"],                          # public functions; eager references
    ["", "privileged"],                            # the package's public names (rlsd_kernels/__init__)
    ["integrations"],                              # adapters to other trainers
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def layer(module: str) -> int:
    """The layer of a module of the package (by its nearest named package)."""
    name = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    while True:
        for i, names in enumerate(LAYERS):
            if name in names:
                return i
        if not name:
            raise AssertionError(f"{module} is in no layer of tests/test_layers.py")
        name = name.rpartition(".")[0]


def is_package(module: str) -> bool:
    return (ROOT.joinpath(*module.split(".")[1:]) / "__init__.py").exists()


def imports(me: str, source: str) -> set:
    """The package's modules that running module ``me`` of ``source`` imports (module docstring)."""
    here = me if is_package(me) else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import name": name is a submodule when it is one
            targets = [f"{base}.{a.name}" if is_package(base) and _is_module(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            parts = target.split(".")
            for n in range(2, len(parts) + 1):  # the module and the packages its import runs
                name = ".".join(parts[:n])
                if not (me == name or me.startswith(name + ".")):
                    found.add(name)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


GRAPH = {module_name(p): imports(module_name(p), p.read_text()) for p in sorted(ROOT.rglob("*.py"))}


def upward(graph, module) -> list:
    return sorted(m for m in graph[module] if layer(m) > layer(module))


def cycle(graph) -> list:
    """One import cycle of ``graph`` ([] if none)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down(module):
    assert not upward(GRAPH, module), f"{module} (layer {layer(module)}) imports from above: {upward(GRAPH, module)}"


def test_no_import_cycles():
    assert not cycle(GRAPH), "import cycle: " + " -> ".join(cycle(GRAPH))


def test_the_checks_see_an_import_up_and_a_cycle():
    """The checks can fail: ``math`` importing the API goes up, even inside a function or under
    TYPE_CHECKING; ``ops.chunked`` importing ``ops.eager`` while it imports back is a cycle."""
    for line in ("from .api import rlsd_loss", "def f():\n    from . import api",
                 "if TYPE_CHECKING:\n    from .tokens import TokenInputs", "import rlsd_kernels.ops.eager"):
        graph = dict(GRAPH, **{f"{PACKAGE}.math": imports(f"{PACKAGE}.math", line)})
        assert upward(graph, f"{PACKAGE}.math"), line
    chunked, eager = f"{PACKAGE}.ops.chunked", f"{PACKAGE}.ops.eager"
    graph = dict(GRAPH, **{chunked: GRAPH[chunked] | {eager}, eager: GRAPH[eager] | {chunked}})
    assert cycle(graph)


def test_the_layers_are_those_of_the_architecture_doc():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    for names in LAYERS:
        for name in names:
            shown = f"{name.replace('.', '/')}.py" if name and not is_package(f"{PACKAGE}.{name}") else \
                f"{name.replace('.', '/')}/" if name else "__init__.py"
            assert shown in doc, f"docs/architecture.md does not show the layer of {shown}"
