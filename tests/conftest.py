"""Shared fixtures. KVM tests skip where /dev/kvm is unusable, unless KVMLAB_REQUIRE_KVM=1
(CI sets it where /dev/kvm exists), in which case they fail: a KVM test never silently skips
on a machine that has KVM."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from kvmlab.kvm import kvm_unavailable_reason

from .kernelkit import build_kernels
from .procfs import kvmlab_threads

KVM_REASON = kvm_unavailable_reason()
REQUIRE_KVM = os.environ.get("KVMLAB_REQUIRE_KVM") == "1"
#: kvm_pvm (nested, paravirtualized KVM) reports some faults differently from hardware KVM.
KVM_PVM = os.path.exists("/sys/module/kvm_pvm")


def pytest_runtest_setup(item):
    if "kvm" in item.keywords and KVM_REASON is not None:
        if REQUIRE_KVM:
            pytest.fail(f"KVMLAB_REQUIRE_KVM=1 but KVM is unusable here: {KVM_REASON}", pytrace=False)
        pytest.skip(f"no usable KVM: {KVM_REASON}")


@pytest.fixture(params=[pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("emulated", marks=pytest.mark.emulated)])
def engine(request):
    """Runs a test on both engines (the KVM run skips or fails as every KVM test does)."""
    return request.param


@pytest.fixture
def machines():
    """Makes Machines (on KVM unless the test says otherwise) and closes every one of them
    after the test, whatever happened."""
    from kvmlab import Machine

    made = []

    def make(*args, **kwargs):
        kwargs.setdefault("engine", "kvm")
        machine = Machine(*args, **kwargs)
        made.append(machine)
        return machine

    yield make
    for machine in made:
        machine.close()


@pytest.fixture(
    params=[
        pytest.param("kvm", marks=pytest.mark.kvm),
        pytest.param("emulated", marks=pytest.mark.emulated),
        pytest.param("emulated-python-kick", marks=pytest.mark.emulated),
    ]
)
def engine_and_kick(request, monkeypatch):
    """Both engines, and the emulated one with each of its block hooks (``uc_kick``: the C one
    and the Python one, which check for kicks and watch for the interrupt window the same way)."""
    from kvmlab.engines import uc_kick

    engine, _, kick = request.param.partition("-")
    monkeypatch.setenv(uc_kick.ENV_CHOICE, "python" if kick else "c")
    return engine


@pytest.fixture(scope="session")
def kernels(tmp_path_factory):
    """The test kernels (tests/kernels/*.s), assembled and linked once per run."""
    return build_kernels(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test must join what it started: no kvmlab thread may outlive it."""
    yield
    gc.collect()
    leftovers = kvmlab_threads()
    for _ in range(40):
        if not leftovers:
            break
        threading.Event().wait(0.05)
        leftovers = kvmlab_threads()
    assert not leftovers, f"threads left running: {leftovers}"


@pytest.fixture
def tiny_disk():
    """An empty folder on a 64 KiB tmpfs, for full-disk checks; unmounted however the test
    ends. Mounting needs root: skipped otherwise, unless KVMLAB_REQUIRE_TINY_DISK=1 (CI sets
    it, as it runs as root): then a missing right fails instead of hiding the full-disk checks."""
    if os.geteuid() != 0:
        if os.environ.get("KVMLAB_REQUIRE_TINY_DISK") == "1":
            pytest.fail("KVMLAB_REQUIRE_TINY_DISK=1 but not root: the full-disk checks cannot mount their tmpfs", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")
    from .tinydisk import mounted_tmpfs

    with mounted_tmpfs() as folder:
        yield folder
