"""Owned file descriptors: every fd kvmlab's KVM bindings create is owned from the ioctl on,
so a failure in any later step of building its owner (or of the VM that uses it) closes it.

Each forced-failure test counts /proc/self/fd right after the failure, while the exception
(``caught``, whose traceback holds the half-built object's frame) is still alive: an fd that
waits for the object to be collected is a leak for as long as anyone keeps the error, and
Jupyter keeps the last one (``sys.last_traceback``) until the next.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os

import pytest

from kvmlab.errors import FdClosedError, KvmlabError
from kvmlab.kvm import Kvm, KvmIoctlError, KvmUnavailableError, OwnedFd
from kvmlab.kvm import stats as kvm_stats
from kvmlab.kvm import structs as ks
from kvmlab.kvm import vm as kvm_vm

from .procfs import open_fds


class Boom(Exception):
    """The forced failure."""


def _raise_boom(*args, **kwargs):
    raise Boom("forced failure")


# --- OwnedFd itself (no KVM needed) ---------------------------------------------------------------


def _devnull() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def test_close_is_idempotent_and_then_every_use_raises_the_kvmlab_error():
    before = open_fds()
    owner = OwnedFd(_devnull(), "test handle")
    number = owner.fd
    assert owner.fileno() == number and not owner.closed and len(open_fds()) == len(before) + 1
    owner.close()
    owner.close()
    assert owner.closed and open_fds() == before
    for use in (lambda: owner.fd, owner.fileno):
        with pytest.raises(FdClosedError, match="test handle is closed") as caught:
            use()
        assert isinstance(caught.value, KvmlabError) and isinstance(caught.value, ValueError)
    assert "closed" in repr(owner)


def test_the_with_block_and_the_garbage_collector_close_it():
    before = open_fds()
    with OwnedFd(_devnull(), "test handle") as owner:
        assert len(open_fds()) == len(before) + 1
    assert owner.closed and open_fds() == before

    OwnedFd(_devnull(), "forgotten")  # never closed by hand: the finalizer does it
    gc.collect()
    assert open_fds() == before


def test_closed_on_error_closes_and_reraises():
    before = open_fds()
    owner = OwnedFd(_devnull(), "test handle")
    with pytest.raises(Boom):
        with owner.closed_on_error():
            raise Boom("a later step")
    assert owner.closed and open_fds() == before


def test_closed_error_survives_pickling():
    import pickle

    err = FdClosedError("VcpuFd of vCPU 3")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is FdClosedError and str(copy) == str(err) and copy.what == "VcpuFd of vCPU 3"


# --- against /dev/kvm ------------------------------------------------------------------------------


@pytest.fixture
def kvm():
    with Kvm() as k:
        yield k


@pytest.mark.kvm
def test_create_vm_and_vcpu_and_stats_return_their_owners(kvm):
    before = open_fds()
    with kvm.create_vm() as vm:
        with vm.create_vcpu(0, kvm.get_vcpu_mmap_size()) as vcpu:
            with vcpu.get_stats_fd() as stats:
                assert all(isinstance(o, OwnedFd) for o in (vm, vcpu, stats))
                assert stats.read()["exits"] == 0
    assert open_fds() == before
    assert vm.closed and vcpu.closed and stats.closed


@pytest.mark.kvm
def test_use_after_close_raises_instead_of_an_ioctl_on_a_reused_number(kvm):
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0, kvm.get_vcpu_mmap_size())
    stats = vcpu.get_stats_fd()
    for owner in (stats, vcpu, vm):
        owner.close()
    # The numbers are free again: whatever opens next may get one of them.
    for call in (vcpu.get_regs, vcpu.run, stats.read, lambda: vm.set_tss_addr(0xFFFBD000)):
        with pytest.raises(FdClosedError, match="is closed"):
            call()
    with pytest.raises(FdClosedError, match="VcpuFd of vCPU 0"):
        vcpu.get_mp_state()


@pytest.mark.kvm
@pytest.mark.parametrize("step", ["mmap", "kvm_run view"])
def test_a_failed_kvm_run_mapping_closes_the_vcpu_fd(kvm, monkeypatch, step):
    mmap_size = kvm.get_vcpu_mmap_size()
    with kvm.create_vm() as vm:
        before = open_fds()
        if step == "mmap":
            monkeypatch.setattr(mmap, "mmap", _raise_boom)
        else:  # after the mapping succeeded: the mapping (and its dup of the fd) must go too
            monkeypatch.setattr(ks.kvm_run, "from_buffer", _raise_boom)
        with pytest.raises(Boom) as caught:
            vm.create_vcpu(0, mmap_size)
        assert open_fds() == before, f"the vCPU fd leaked when the {step} failed"
        monkeypatch.undo()
        del caught
        with pytest.raises(KvmIoctlError) as taken:  # KVM keeps a vCPU whose fd was closed
            vm.create_vcpu(0, mmap_size)
        assert taken.value.errno == errno.EEXIST
        with vm.create_vcpu(1, mmap_size) as vcpu:  # the VM itself is still usable
            assert vcpu.index == 1


@pytest.mark.kvm
def test_a_failed_stats_header_read_closes_the_stats_fd(kvm, monkeypatch):
    with kvm.create_vm() as vm, vm.create_vcpu(0, kvm.get_vcpu_mmap_size()) as vcpu:
        before = open_fds()
        monkeypatch.setattr(kvm_stats.os, "pread", _raise_boom)
        with pytest.raises(Boom) as caught:
            vcpu.get_stats_fd()
        assert open_fds() == before, "the stats fd leaked when its header read failed"
        del caught


@pytest.mark.kvm
def test_a_wrong_api_version_closes_the_system_fd(monkeypatch):
    before = open_fds()
    monkeypatch.setattr(Kvm, "get_api_version", lambda self: 11)
    with pytest.raises(KvmUnavailableError, match="API version 11") as caught:
        Kvm()
    assert open_fds() == before, "the /dev/kvm fd leaked when its version check failed"
    del caught


@pytest.mark.kvm
def test_a_failed_vm_setup_step_closes_the_vm_fd(monkeypatch):
    from kvmlab.engines.kvm import KvmEngine

    engine = KvmEngine()
    try:
        before = open_fds()
        monkeypatch.setattr(kvm_vm.VmFd, "set_tss_addr", _raise_boom)
        with pytest.raises(Boom) as caught:
            engine.create_vm()
        assert open_fds() == before, "the VM fd leaked when KVM_SET_TSS_ADDR failed"
        del caught
    finally:
        engine.close()


@pytest.mark.kvm
def test_a_failed_vcpu_setup_step_in_the_engine_closes_the_vcpu_fd(monkeypatch):
    from kvmlab.engines.kvm import KvmEngine

    engine = KvmEngine()
    backend = engine.create_vm()
    try:
        before = open_fds()
        monkeypatch.setattr(mmap, "mmap", _raise_boom)
        with pytest.raises(Boom) as caught:
            backend.create_vcpu(0, 1)
        assert open_fds() == before, "the vCPU fd leaked when its kvm_run mapping failed"
        del caught
    finally:
        backend.close()
        engine.close()
