"""kvmlab's packages form a stack (docs/architecture.md): each imports only from below it.

An import that goes up (the KVM bindings reaching for a vCPU, a device reaching for the
Machine) is how a boundary blurs; imports for type hints only (under ``TYPE_CHECKING``) do
not count, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kvmlab"

#: lowest first; a component may import from its own layer and any layer before it
LAYERS = [
    {"errors", "x86", "checks"},
    {"kvm"},
    {"metrics", "plotting"},
    {"vstate"},
    {"devices"},
    {"guest"},
    {"engines"},
    {"config", "vmm"},
    {"machine"},
    {"parity", "bench", "lab", "exercises", "diagrams"},
    {"widgets"},
    {"cli", "__main__", "kvmlab"},  # the command and the package's front door
]
RANK = {component: rank for rank, layer in enumerate(LAYERS) for component in layer}
#: what ``from . import X`` inside kvmlab/ means when X is a name of kvmlab/__init__.py
FRONT_DOOR = {"Machine", "programs", "__version__"}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(n) for n in ast.walk(node)}
    return hidden


def imports_by_component() -> dict[str, set[tuple[str, str]]]:
    """component -> {(imported component, where)} for every relative import that runs."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        package = parts if path.name == "__init__.py" else parts[:-1]
        component = parts[1] if len(parts) > 1 else "kvmlab"
        tree = ast.parse(path.read_text())
        hidden = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in hidden or not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package[: len(package) - node.level + 1]
            targets = [base + node.module.split(".")] if node.module else [base + [alias.name] for alias in node.names]
            for target in targets:
                other = "kvmlab" if len(target) == 1 or target[1] in FRONT_DOOR else target[1]
                if other != component:
                    found.setdefault(component, set()).add((other, f"{path.relative_to(PACKAGE)}:{node.lineno}"))
    return found


def test_every_component_has_a_layer():
    assert set(imports_by_component()) - set(RANK) == set()


def test_no_import_goes_up_the_stack():
    upward = sorted(
        f"{where}: {component} imports {other}"
        for component, imported in imports_by_component().items()
        for other, where in imported
        if RANK[other] > RANK[component]
    )
    assert upward == [], "see the layers in docs/architecture.md"
