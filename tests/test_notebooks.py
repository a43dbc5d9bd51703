"""Every notebook runs top to bottom, unedited, in a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Text each notebook must print when it works (one check of substance per notebook).
EXPECTED = {
    "00-the-kvm-api.ipynb": ["exit: MachineExit(0", "| console: Hi", "KVM_RUN                                    kvmlab/engines/kvm.py:", "Not yet. You returned nothing"],
    "01-first-vm.ipynb": ["KVM_EXIT_IO out port 0x3f8", "KVM_EXIT_MMIO read 4 bytes at 0xa0000", "KVM_EXIT_HLT", "console: 'Hi'", "Exercise: not answered yet"],
    "02-vcpu-threads.ipynb": ["-> NotAllowed('save/restore unavailable while running', seq=2)", "-> Paused(seq=3)", "pause(0): vCPU 0 has exited", "closed in", "Not yet. 10 of 12 differ"],
    "03-mmio-exits.ipynb": ["[Running, Paused]", "vCPU 1: 0 exits/s", "[Running, Running]", "[Paused, Paused]", "machine closed: False", "Exercise: not answered yet"],
    "04b-paging-and-address-spaces.ipynb": ["0x8004 -> physical 0x8004; kvmlab.guest.paging.translate says 0x8004", "PT[  0] at 0x21000 = 0x00000000000a0003", "KVM_EXIT_MMIO write 4 bytes at 0xa0004, data 0x1234", "PING register now holds 0x1234", "Not yet."],
    "04-cpu-modes.ipynb": ["64-bit long mode, paging on", "PE ET NE WP PG", "=>", "Not yet."],
    "05-exit-analysis.ipynb": ["every vCPU halted", "dropped: {0: 0, 1: 0}", "Exercise: not answered yet"],
    "06-write-a-device.ipynb": ["numbers drawn 1000", "drawn: 2000", "the fourth number is cursed", "exit code 42: vCPU 1: debug-exit port write (42)", "0xa0100", "Exercise: not answered yet"],
    "08-interrupts-and-timers.ipynb": [
        "Running (halted)", "0% of a core", "pending [64]", "interrupt_injected", "window exits 1",
        "64-bit interrupt gate -> 0x18:", "cannot be delivered", "0x600df00d", "injected = handled on every vCPU: True", "Not yet.",
    ],
    "07-real-kernels.ipynb": ["exit code 0: vCPU 0: debug-exit port write (0)", "kvmlab boot exit status 1", "the kernel will see the command line: 'smp_demo.elf demo loglevel=1'", "Not yet. The map says"],
}


#: what a notebook prints only where it runs on KVM (on the emulated engine it says why not)
EXPECTED_ON_KVM = {
    "08-interrupts-and-timers.ipynb": ["LAPIC timer", "PIT"],
    "00-the-kvm-api.ipynb": ["KVM_GET_API_VERSION -> 12", "KVM_EXIT_IO out port 0x3f8, 1 byte(s): b'H'", "KVM_EXIT_HLT: the guest halted", "console: Hi"],
}


# Code the test runs after a notebook's last cell, in its kernel, and what it must print: what a
# student finds after Run All (the stored notebook is not changed).
PROBES = {
    "01-first-vm.ipynb": [
        ("check_mmio_write((0xA0008, 4))", "Exercise: right, 4 bytes at 0xa0008"),
        ("check_mmio_write((0xA0004, 2))", "Exercise: not quite"),
    ],
    "05-exit-analysis.ipynb": [
        ("print('legend:', [t.get_text() for t in rates_ax.get_legend().get_texts()])", "legend: ['vCPU 0: MMIO reads', 'vCPU 1: MMIO reads', 'vCPU 0: MMIO writes', 'vCPU 1: MMIO writes']"),
        ("print('x:', latency_ax.get_xlabel(), '| fits:', latency_ax.get_xlim()[1] <= read_latency.max())", "x: device call, microseconds | fits: True"),
        ("print('integer counts:', all(pd.api.types.is_integer_dtype(t) for t in check.dtypes))", "integer counts: True"),
        ("check_ping_reads(len(trace[(trace.vcpu == '1') & (trace.reason == 'mmio_read') & (trace.address == 0xA0004)]))", "Exercise: right"),
    ],
    "06-write-a-device.ipynb": [
        ("check_exits(200_000 + 1, m.results(1)['polls'])", "Exercise: right, 200,001"),
        ("print('machine closed:', m.closed, '| exit code', int(m.exit))", "machine closed: False | exit code 42"),
    ],
    "08-interrupts-and-timers.ipynb": [
        ("print(check_interrupt_gate(lambda h, s: struct.pack('<HHBBHII', h & 0xFFFF, s, 0, 0x8E, h >> 16, h >> 32, 0)))", "Right. Vector"),
        ("print(check_interrupt_gate(lambda h, s: struct.pack('<HHBBHII', h & 0xFFFF, s, 0, 0x8F, h >> 16, h >> 32, 0)))", "leaves IF set"),
    ],
    "03-mmio-exits.ipynb": [
        ("print('after Run All the machine is', m.phase, 'closed:', m.closed)", "after Run All the machine is started closed: False"),
        ("check_writes(m.mailbox.ping)", "Exercise: right"),
        ("check_writes(m.mailbox.ping + 1)", "Exercise: not quite"),
    ],
}


def test_every_notebook_is_covered():
    assert [nb.name for nb in NOTEBOOKS] == sorted(EXPECTED)


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs in git; strip them"


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                parts.append(output["text"])
            for key in ("text/plain", "text/html"):
                if key in output.get("data", {}):
                    parts.append(output["data"][key])
    return "\n".join(parts)


FIRST_LINE = {
    "kvm": "Machines run on real KVM",
    "emulated": "Machines run on the emulated engine (Unicorn, a CPU emulator)",
}


@pytest.fixture(params=[pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("emulated", marks=pytest.mark.emulated)])
def notebook_engine(request, monkeypatch):
    """The notebooks use engine="auto": run them once on KVM and once with KVM hidden, as on
    Binder (the kernel inherits the environment)."""
    if request.param == "emulated":
        monkeypatch.setenv("KVMLAB_KVM_PATH", "/nonexistent/kvm")
    # the kernel imports the kvmlab under test (this checkout), not whichever one is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return request.param


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, notebook_engine):
    work = tmp_path / path.name
    shutil.copy(path, work)
    nb = nbformat.read(work, as_version=4)
    probes = PROBES.get(path.name, [])
    nb.cells += [nbformat.v4.new_code_cell(code) for code, _ in probes]
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    text = _text(nb)
    assert FIRST_LINE[notebook_engine] in text, "the first cell says which engine runs"
    for expected in EXPECTED[path.name] + (EXPECTED_ON_KVM.get(path.name, []) if notebook_engine == "kvm" else []):
        assert expected in text, f"{path.name} did not print {expected!r}"
    for cell, (code, expected) in zip(nb.cells[len(nb.cells) - len(probes) :], probes):
        assert expected in _text(nbformat.v4.new_notebook(cells=[cell])), f"{path.name}, then {code!r}: no {expected!r}"
