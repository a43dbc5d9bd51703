"""The engine boundary: engines declare what they can do, and nothing above them asks their name.

Issue 10, part 2 (and the Machine split of part 6): an abstract Engine/VmBackend/VcpuBackend,
a Capabilities record that callers read, engines chosen by availability, a configuration
checked once before anything is built, and no property that creates vCPUs when read.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from kvmlab import ConfigError, EngineCapabilityError, Machine, programs
from kvmlab.config import MachineConfig
from kvmlab.engines import ENGINES, Capabilities, EmulatedEngine, Engine, KvmEngine, VcpuBackend, VmBackend, open_engine, resolve
from kvmlab.engines import select

from .procfs import open_fds

PACKAGE = Path(__file__).resolve().parents[1] / "kvmlab"
ENGINE_NAMES = {engine.name for engine in ENGINES}


def _name_tests(tree: ast.AST) -> list[int]:
    """Lines comparing something with an engine's name (``x == "kvm"``, ``x in ("kvm", ...)``)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            values = [operand] if isinstance(operand, ast.Constant) else list(getattr(operand, "elts", []))
            if any(isinstance(v, ast.Constant) and v.value in ENGINE_NAMES for v in values):
                found.append(node.lineno)
    return found


def test_nothing_above_the_engines_tests_an_engines_name():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if "engines" in path.relative_to(PACKAGE).parts:
            continue
        lines = _name_tests(ast.parse(path.read_text(), str(path)))
        if lines:
            offenders[str(path.relative_to(PACKAGE))] = lines
    assert not offenders, f"ask the engine's Capabilities instead of comparing its name: {offenders}"


def test_the_name_check_itself_finds_a_comparison():
    assert _name_tests(ast.parse('if engine == "kvm": pass\nok = name in ("emulated", "x")')) == [1, 2]


def test_the_abstract_bases_refuse_an_incomplete_engine():
    class Half(Engine):
        name = "half"

    with pytest.raises(TypeError, match="abstract"):
        Half()
    for base in (VmBackend, VcpuBackend):
        with pytest.raises(TypeError, match="abstract"):
            base()


@pytest.mark.kvm
def test_kvm_declares_what_it_can_do():
    engine = KvmEngine()
    try:
        caps = engine.capabilities
        assert isinstance(caps, Capabilities) and caps.name == "kvm" and caps.label == "KVM"
        assert caps.max_vcpus == engine.kvm.max_vcpus() and caps.irqchip and caps.cpuid_mask and caps.mp_state
        assert caps.kernel_stats and caps.single_step  # kvm_pvm has BINARY_STATS_FD and SET_GUEST_DEBUG
        vm = engine.create_vm()
    finally:
        engine.close()
    try:
        assert isinstance(vm, VmBackend) and vm.capabilities is caps and not vm.irqchip
    finally:
        vm.close()


@pytest.mark.emulated
def test_the_emulator_declares_what_it_cannot_do():
    engine = EmulatedEngine()
    caps = engine.capabilities
    assert caps.name == "emulated" and caps.label == "the emulated engine" and caps.max_vcpus == 256
    assert not (caps.irqchip or caps.cpuid_mask or caps.kernel_stats or caps.mp_state or caps.single_step)
    vm = engine.create_vm()
    with pytest.raises(EngineCapabilityError, match="the emulated engine has no in-kernel interrupt controllers"):
        vm.create_irqchip()


@pytest.mark.emulated
def test_a_capability_an_engine_lacks_is_refused_by_name(machines):
    m = machines(vcpus=1, engine="emulated")
    m.load(programs.hello())
    backend = m._vmm.vcpus[0].backend
    assert backend.kernel_stats() is None
    with pytest.raises(EngineCapabilityError, match=r"set_single_step\(\): the emulated engine has no single-stepping; run on KVM"):
        backend.set_single_step(True)


@pytest.mark.kvm
def test_single_step_on_kvm_exits_after_each_instruction(machines):
    m = machines(vcpus=1, memory_mib=1)
    m.load("mov ax, 1\nmov bx, 2\nmov cx, 3\nhlt", mode="real")
    assert m.capabilities.single_step
    m._vmm.vcpus[0].backend.set_single_step(True)
    records = [m.step() for _ in range(3)]
    assert [r.reason for r in records] == ["DEBUG"] * 3
    assert m.registers(0)["rcx"] & 0xFFFF == 3 and m.registers(0)["rip"] == records[-1].fields["pc"]
    m._vmm.vcpus[0].backend.set_single_step(False)
    assert m.step().reason == "HLT"


@pytest.mark.kvm
def test_auto_takes_the_first_engine_that_works(monkeypatch):
    assert select.ENGINES[0] is KvmEngine  # the best first
    monkeypatch.delenv("KVMLAB_ENGINE", raising=False)
    assert resolve("auto") == "kvm"
    monkeypatch.setattr(KvmEngine, "unavailable_reason", classmethod(lambda cls, path=None: "hidden for this test"))
    assert resolve("auto") == "emulated"
    assert "KVM: hidden for this test" in select.why_not_preferred("emulated")


def test_an_unknown_engine_lists_the_choices():
    with pytest.raises(ConfigError, match="engine='qemu': choose one of auto, kvm, emulated"):
        open_engine("qemu")


# --- the configuration: checked once, before anything is built -----------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"vcpus": 0}, "vcpus=0: need a whole number of at least 1"),
        ({"memory_mib": float("nan")}, "memory_mib=nan"),
        ({"timeout": float("inf")}, "timeout=inf"),
        ({"sample_hz": 5000}, "sample_hz=5000"),
        ({"trace": "yes"}, "trace='yes': True or False"),
        ({"engine": 3}, "engine=3"),
    ],
)
def test_a_bad_argument_costs_no_engine(arguments, message):
    before = open_fds()
    with pytest.raises(ConfigError, match=message):
        Machine(**arguments)
    assert open_fds() == before


def test_the_configuration_is_frozen_and_normalised():
    config = MachineConfig(vcpus=2, memory_mib=0.5, timeout=3)
    assert config.memory == 512 * 1024 and isinstance(config.timeout, float)
    with pytest.raises(AttributeError):
        config.vcpus = 3


@pytest.mark.kvm
def test_the_vcpu_limit_is_the_engines_and_checked_once(monkeypatch):
    calls = []
    original = MachineConfig.check_engine
    monkeypatch.setattr(MachineConfig, "check_engine", lambda self, caps: (calls.append(caps.max_vcpus), original(self, caps))[1])
    with Machine(vcpus=2) as m:
        m.load(programs.hello())
        m.start()
        m.wait(10)
    assert len(calls) == 1


@pytest.mark.parametrize("engine", ["kvm", "emulated"])
def test_reading_a_machine_creates_no_vcpus(engine, machines):
    m = machines(vcpus=2, engine=engine)
    assert m.metrics.totals().loc["all", "exit_io_out"] == 0 and m.memory.size == 2 << 20
    assert m.mmio_bus.entries and m.irqchip is None and m.states[0].state.value == "Created"
    assert not m.built  # nothing above was a side effect
    m.load(programs.hello())
    assert m.built and m.irqchip is False
    m.start()
    m.wait(10)
    assert m.metrics.totals().loc["all", "exit_io_out"] > 0


@pytest.mark.kvm
def test_kernel_statistics_join_the_metrics_with_the_vcpus(machines):
    m = machines(vcpus=1)
    assert "kvm.exits" not in m.metrics.names  # no vCPU yet, so no statistics of one
    m.load(programs.hello())
    assert "kvm.exits" in m.metrics.names
    m.start()
    m.wait(10)
    assert m.metrics.totals().loc["0", "kvm.exits"] > 0


@pytest.mark.kvm
def test_a_machine_used_before_boot_still_gets_its_irqchip(machines, kernels):
    from kvmlab.devices import Mailbox

    m = machines(vcpus=2, memory_mib=8)
    m.add_device(Mailbox("spare"), 0xB0000)  # before: this built the VM without the irqchip
    m.memory.ranges, m.metrics.names
    m.boot(kernels.smp32)
    assert m.irqchip is True
    m.start()
    assert int(m.wait(30)) == 0


@pytest.mark.kvm
def test_a_device_where_the_irqchip_must_go_is_named_at_boot(machines, kernels):
    from kvmlab.devices import Mailbox
    from kvmlab.errors import DeviceOverlapError

    m = machines(vcpus=2, memory_mib=8)
    m.add_device(Mailbox("squatter"), 0xFEC00000)
    with pytest.raises(DeviceOverlapError, match="'squatter' at .* lies where KVM's in-kernel IOAPIC/LAPIC must be"):
        m.boot(kernels.smp32)


def test_the_first_line_of_a_notebook_needs_no_engine_name():
    """The summary comes from the engines' own notes and reasons."""
    from kvmlab import engine_summary as summary

    line = summary()
    assert line.startswith("Machines run on ") and any(engine.note()[:20] in line for engine in ENGINES)
    assert os.environ.get("KVMLAB_ENGINE") or "emulated" not in resolve("auto") or "KVM:" in line


@pytest.mark.kvm
def test_a_boot_refused_for_a_device_leaves_no_irqchip_behind(machines, kernels):
    from kvmlab.devices import Mailbox
    from kvmlab.errors import DeviceOverlapError

    m = machines(vcpus=1, memory_mib=8)
    m.add_device(Mailbox("on the lapic"), 0xFEE00000)
    with pytest.raises(DeviceOverlapError):
        m.boot(kernels.smp32)
    assert m.irqchip is None and not m.built
    m.load("hlt")  # the program's HLT reaches kvmlab: no in-kernel LAPIC swallowed it
    assert m.step().reason == "HLT"


@pytest.mark.kvm
def test_a_kernel_that_does_not_fit_is_refused_before_the_vcpus_exist(machines, kernels):
    from kvmlab.guest.kernels import smp_demo
    from kvmlab.guest.multiboot import MultibootError

    m = machines(vcpus=1, memory_mib=1)
    with pytest.raises(MultibootError, match="outside guest RAM"):
        m.boot(smp_demo())
    assert not m.built and m.irqchip is None
    m.load("hlt")
    assert m.step().reason == "HLT"
