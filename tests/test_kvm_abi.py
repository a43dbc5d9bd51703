"""Checks every ctypes struct, field offset, ioctl number and constant in ``kvmlab.kvm``
against the system's ``<linux/kvm.h>``, by compiling and running a C program with gcc.

A wrong offset would not crash: it would silently hand a vCPU the wrong registers. This test
is what makes the bindings trustworthy.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from kvmlab.kvm import constants as kc
from kvmlab.kvm import structs as ks

# Python field names that differ from the C member path. kvm_run's exit union is anonymous in C.
RENAMES = {("kvm_run", "exit"): None}
# Structs whose C size is larger than what kvmlab declares (kvm_run continues with a 2 KiB
# sync-regs union kvmlab never touches); their offsets are still checked.
PARTIAL = {"kvm_run"}
# Constants newer than the oldest headers kvmlab supports; checked only where the header has them.
OPTIONAL_MACROS = {"KVM_SYSTEM_EVENT_SEV_TERM", "KVM_MP_STATE_SUSPENDED", "KVM_MP_STATE_AP_RESET_HOLD", "KVM_EXIT_NOTIFY"}


def _walk(struct_type, c_prefix: str, py_prefix: str, c_name: str, out: list[tuple[str, str, int, int]]):
    """(python path, C member path, offset, size) of every field, recursively."""
    for field_name, field_type, *_ in struct_type._fields_:
        descriptor = getattr(struct_type, field_name)
        key = (c_name, field_name) if not c_prefix else None
        renamed = RENAMES.get(key, field_name) if key in RENAMES else field_name
        c_path = f"{c_prefix}.{renamed}" if c_prefix and renamed else (renamed or c_prefix)
        py_path = f"{py_prefix}.{field_name}" if py_prefix else field_name
        base = descriptor.offset
        if c_path:
            out.append((py_path, c_path, base, descriptor.size))
        if isinstance(field_type, type) and issubclass(field_type, (ctypes.Structure, ctypes.Union)):
            nested: list[tuple[str, str, int, int]] = []
            _walk(field_type, c_path or "", py_path, c_name, nested)
            out.extend((p, c, base + o, s) for p, c, o, s in nested)


def _c_program() -> tuple[str, dict[str, int]]:
    expected: dict[str, int] = {}
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]

    def emit(label: str, c_expr: str, value: int, optional: bool = False):
        expected[label] = value
        body = f'printf("%s %llu\\n", "{label}", (unsigned long long)({c_expr}));'
        if optional:
            macro = c_expr
            lines.append(f"#ifdef {macro}\n{body}\n#endif")
        else:
            lines.append(body)

    for c_name, struct_type in ks.ABI_STRUCTS.items():
        if c_name not in PARTIAL:
            emit(f"sizeof:{c_name}", f"sizeof(struct {c_name})", ctypes.sizeof(struct_type))
        fields: list[tuple[str, str, int, int]] = []
        _walk(struct_type, "", "", c_name, fields)
        for py_path, c_path, offset, size in fields:
            emit(f"offset:{c_name}.{py_path}", f"offsetof(struct {c_name}, {c_path})", offset)
            emit(f"size:{c_name}.{py_path}", f"sizeof(((struct {c_name} *)0)->{c_path})", size)

    for name, value in kc.IOCTL_NUMBERS.items():
        emit(f"ioctl:{name}", name, value)
    for enum_type, prefix in (
        (kc.ExitReason, "KVM_EXIT_"),
        (kc.Cap, "KVM_CAP_"),
        (kc.InternalErrorSuberror, "KVM_INTERNAL_ERROR_"),
        (kc.SystemEvent, "KVM_SYSTEM_EVENT_"),
        (kc.MpState, "KVM_MP_STATE_"),
    ):
        for member in enum_type:
            macro = f"{prefix}{member.name}"
            emit(f"const:{macro}", macro, int(member), optional=macro in OPTIONAL_MACROS)
    for name in ("KVM_API_VERSION", "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT", "KVM_GUESTDBG_ENABLE", "KVM_GUESTDBG_SINGLESTEP",
                 "KVM_GUESTDBG_USE_SW_BP", "KVM_GUESTDBG_USE_HW_BP", "KVM_GUESTDBG_INJECT_DB", "KVM_GUESTDBG_INJECT_BP"):  # fmt: skip
        emit(f"const:{name}", name, getattr(kc, name))
    emit("offset:kvm_run.immediate_exit(hot path)", "offsetof(struct kvm_run, immediate_exit)", kc.RUN_IMMEDIATE_EXIT)
    emit("offset:kvm_run.exit_reason(hot path)", "offsetof(struct kvm_run, exit_reason)", kc.RUN_EXIT_REASON)
    emit("offset:kvm_run.mmio(hot path)", "offsetof(struct kvm_run, mmio)", kc.RUN_EXIT_UNION)
    lines.append("return 0; }")
    return "\n".join(lines), expected


@pytest.fixture(scope="module")
def header_values(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check the KVM ABI against <linux/kvm.h>")
    source, expected = _c_program()
    work = tmp_path_factory.mktemp("abi")
    (work / "abi.c").write_text(source)
    build = subprocess.run(["gcc", "-o", str(work / "abi"), str(work / "abi.c")], capture_output=True, text=True)
    assert build.returncode == 0, f"the ABI probe does not compile:\n{build.stderr[-4000:]}"
    run = subprocess.run([str(work / "abi")], capture_output=True, text=True, check=True)
    actual = {}
    for line in run.stdout.splitlines():
        label, value = line.rsplit(" ", 1)
        actual[label] = int(value)
    return expected, actual


def test_every_declared_value_matches_the_headers(header_values):
    expected, actual = header_values
    mismatches = {label: (expected[label], actual[label]) for label in actual if expected[label] != actual[label]}
    assert not mismatches, "python != C for: " + ", ".join(f"{k}: {v[0]} != {v[1]}" for k, v in mismatches.items())


def test_nothing_was_left_unchecked(header_values):
    expected, actual = header_values
    missing = {label for label in expected if label not in actual and label.split(":", 1)[1] not in OPTIONAL_MACROS}
    assert not missing, f"not checked against the headers: {sorted(missing)}"
    assert sum(label.startswith("offset:") for label in actual) > 150
    assert sum(label.startswith("ioctl:") for label in actual) == len(kc.IOCTL_NUMBERS) >= 30  # the sweep found them all


def test_hot_path_indices_agree_with_offsets():
    from kvmlab.vstate import exits as ex

    run = ks.kvm_run
    union = run.exit.offset
    assert ex.U32_EXIT_REASON * 4 == run.exit_reason.offset
    assert ex.U64_MMIO_PHYS_ADDR * 8 == union + ks.kvm_run_mmio.phys_addr.offset
    assert ex.U64_MMIO_DATA * 8 == union + ks.kvm_run_mmio.data.offset
    assert ex.U32_MMIO_LEN * 4 == union + ks.kvm_run_mmio.len.offset
    assert ex.U8_MMIO_IS_WRITE == union + ks.kvm_run_mmio.is_write.offset
    assert ex.U8_IO_DIRECTION == union + ks.kvm_run_io.direction.offset
    assert ex.U8_IO_SIZE == union + ks.kvm_run_io.size.offset
    assert ex.U16_IO_PORT * 2 == union + ks.kvm_run_io.port.offset
    assert ex.U32_IO_COUNT * 4 == union + ks.kvm_run_io.count.offset
    assert ex.U64_IO_DATA_OFFSET * 8 == union + ks.kvm_run_io.data_offset.offset
    assert ex.U32_EX_WORD0 * 4 == union + ks.kvm_run_internal.suberror.offset == union + ks.kvm_run_system_event.type.offset
    assert ex.U32_EX_WORD1 * 4 == union + ks.kvm_run_internal.ndata.offset
    assert ex.U64_EX_DATA * 8 == union + ks.kvm_run_internal.data.offset == union + ks.kvm_run_debug.arch.offset + 8
    assert ex.U64_FAIL_REASON * 8 == union + ks.kvm_run_fail_entry.hardware_entry_failure_reason.offset
    assert ex.U32_FAIL_CPU * 4 == union + ks.kvm_run_fail_entry.cpu.offset
