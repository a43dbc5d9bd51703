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
from kvmlab.kvm import run as kr
from kvmlab.kvm import structs as ks

# Python field names that differ from the C member path. kvm_run's exit union is anonymous in C.
RENAMES = {("kvm_run", "exit"): None, ("kvm_irq_level", "u"): None}
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
                 "KVM_GUESTDBG_USE_SW_BP", "KVM_GUESTDBG_USE_HW_BP", "KVM_GUESTDBG_INJECT_DB", "KVM_GUESTDBG_INJECT_BP",
                 "KVM_IRQFD_FLAG_DEASSIGN", "KVM_IRQFD_FLAG_RESAMPLE", "KVM_IOEVENTFD_FLAG_DATAMATCH", "KVM_IOEVENTFD_FLAG_PIO",
                 "KVM_IOEVENTFD_FLAG_DEASSIGN", "KVM_PIT_SPEAKER_DUMMY", "KVM_IOAPIC_NUM_PINS",
                 "KVM_COALESCED_MMIO_PAGE_OFFSET"):  # fmt: skip
        emit(f"const:{name}", name, getattr(kc, name))
    for name, c_path in kr.C_PATHS.items():  # every index of the kvm_run views, as offsetof() sees it
        item = kr.KvmRunLayout.item_size(name)
        emit(f"run:{name}", f"offsetof(struct kvm_run, {c_path})", getattr(kr.RUN, name) * item)
        emit(f"run:{name}(module int)", f"offsetof(struct kvm_run, {c_path})", getattr(kr, name) * item)
        emit(f"run:{name}(item size)", f"sizeof(((struct kvm_run *)0)->{c_path})", item)
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


def test_the_run_page_helpers_agree_with_the_ctypes_struct():
    """What ``encode_*`` writes through the views is what the ctypes ``kvm_run`` reads, and
    ``decode_*`` reads it back."""
    page = bytearray(2 * 4096)
    views = memoryview(page)
    u8, u16, u32, u64 = views.cast("B"), views.cast("H"), views.cast("I"), views.cast("Q")
    run = ks.kvm_run.from_buffer(page)

    kr.encode_mmio(u8, u32, u64, 0xD000_0010, 4, 1, 0x1234_5678)
    assert (run.exit_reason, run.exit.mmio.phys_addr, run.exit.mmio.len, run.exit.mmio.is_write) == (
        kc.ExitReason.MMIO, 0xD000_0010, 4, 1)  # fmt: skip
    assert bytes(run.exit.mmio.data)[:4] == (0x1234_5678).to_bytes(4, "little")
    assert kr.decode_mmio(u8, u32, u64) == {"phys_addr": 0xD000_0010, "len": 4, "is_write": 1, "data": 0x1234_5678}

    kr.encode_io(u8, u16, u32, u64, kc.IoDirection.OUT, 0x3F8, 1, 2, 4096)
    u8[4096:4098] = b"Hi"
    io = run.exit.io
    assert (run.exit_reason, io.direction, io.size, io.port, io.count, io.data_offset) == (
        kc.ExitReason.IO, kc.KVM_EXIT_IO_OUT, 1, 0x3F8, 2, 4096)  # fmt: skip
    assert kr.decode_io(u8, u16, u32, u64)["data"] == b"Hi"

    kr.encode_reason(u32, kr.EXIT_HLT)
    assert run.exit_reason == kc.ExitReason.HLT
    u8[kr.IMMEDIATE_EXIT_U8] = 1
    assert run.immediate_exit == 1
    del run, io
    for view in (u8, u16, u32, u64, views):
        view.release()
