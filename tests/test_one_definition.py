"""Each layout, exit reason and architectural bit is defined once (issue 10, part 1).

A second copy is how the kvm_run indices drifted apart before: this walks every module and
refuses a module-level name for one of them outside its owner.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kvmlab"

#: name pattern -> the modules allowed to define such names
OWNERS = {
    r"(CR0|CR3|CR4|EFER|RFLAGS|PTE)_[A-Z0-9_]+": {"x86.py"},  # the architecture's bits
    r"(KVM_)?EXIT_[A-Z_]+(_U8|_U16|_U32|_U64)?": {"kvm/run.py", "kvm/constants.py"},  # exit reasons, page indices
    r"[A-Z_]+_U(8|16|32|64)": {"kvm/run.py"},  # indices into the kvm_run page
    r"IMMEDIATE_EXIT.*": {"kvm/run.py"},
}


def module_level_names(tree: ast.Module) -> list[tuple[str, int, ast.AST | None]]:
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    names.append((name.id, node.lineno, node.value))
    return names


def _literal(value: ast.AST | None) -> bool:
    """A value written out by hand: numbers, and shifts, ors and tables of numbers."""
    return value is not None and all(
        isinstance(n, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Dict, ast.Tuple, ast.List, ast.operator, ast.unaryop, ast.expr_context))
        for n in ast.walk(value)
    )


def second_copies() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        source = path.read_text()
        for name, line, value in module_level_names(ast.parse(source)):
            if not _literal(value):
                continue  # derived from the owner (``CR0_BITS = bit_names(Cr0)``), not a copy
            for pattern, owners in OWNERS.items():
                if re.fullmatch(pattern, name) and module not in owners:
                    found.append(f"{module}:{line}: {name} belongs in {' or '.join(sorted(owners))}")
    return found


def test_no_second_copy_of_a_layout_reason_or_bit():
    assert second_copies() == []


def test_the_check_sees_a_copy_and_not_a_derived_name(tmp_path, monkeypatch):
    (tmp_path / "copy.py").write_text("CR0_PE = 1\nEXIT_HLT = 5\nMMIO_LEN_U32 = 7\nCR0_BITS = bit_names(Cr0)\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    assert [line.split(": ")[1] for line in second_copies()] == ["CR0_PE belongs in x86.py", "EXIT_HLT belongs in kvm/constants.py or kvm/run.py", "MMIO_LEN_U32 belongs in kvm/run.py"]
