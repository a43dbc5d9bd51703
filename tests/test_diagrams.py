"""The notebooks' diagrams are drawn from kvmlab's own definitions, so they say what the code does."""

from __future__ import annotations

from kvmlab import diagrams
from kvmlab.vstate.protocol import VcpuState


def _texts(diagram) -> str:
    assert diagram._repr_png_().startswith(b"\x89PNG"), "a notebook shows it as an image"
    return diagram.texts()


def test_the_state_machine_shows_each_state_and_what_it_accepts():
    text = _texts(diagrams.vcpu_state_machine())
    for state in (VcpuState.PAUSED, VcpuState.RUNNING, VcpuState.EXITED, VcpuState.FINISHED):
        assert state.value in text
    assert "Paused\naccepts: every event" in text and "Exited\naccepts: Finish" in text and "Running\naccepts: Finish, Pause, Resume" in text


def test_the_exit_path_names_the_steps():
    text = _texts(diagrams.exit_path())
    assert "KVM_EXIT_IO" in text and "KVM_RUN returns 0" in text and "KVM, in the host kernel" in text


def test_the_page_walk_diagram_follows_the_real_tables(machines):
    m = machines(vcpus=1, memory_mib=1)
    m.load("hlt", mode="long")
    text = _texts(diagrams.page_walk(m.memory, m.special_registers(0)["cr3"], 0x8004))
    assert "PML4[0]\nat 0x2000\n= 0x3003" in text and "PS: 2 MiB page" in text and "physical\n0x8004" in text
