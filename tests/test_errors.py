"""One error hierarchy: everything kvmlab raises on purpose is a ``KvmlabError``, with the
natural built-in as a second base where callers expect it (KeyError, OSError, ValueError)."""

from __future__ import annotations

import errno
import importlib
import inspect
import pickle
import pkgutil

import pytest

import kvmlab
from kvmlab import cli
from kvmlab import errors  # names looked up at use, so each test fails on its own before the change


def _kvmlab_modules():
    for info in pkgutil.walk_packages(kvmlab.__path__, prefix="kvmlab."):
        if info.name.endswith("__main__"):  # importing it runs the CLI
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError as err:  # an optional extra (unicorn, ipywidgets) missing here
            if not (err.name or "").startswith("kvmlab"):
                continue
            raise


def _exception_classes():
    found = {}
    for module in _kvmlab_modules():
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_exception_class_defined_in_kvmlab_is_a_kvmlab_error():
    classes = _exception_classes()
    assert "kvmlab.errors.ConfigError" in classes and len(classes) > 20  # the walk found them
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, errors.KvmlabError))
    assert outside == []


def test_the_exception_classes_live_in_errors_py_or_subclass_it():
    # A class defined elsewhere is a KvmlabError (checked above); the ones that used not to be
    # are now errors.py's own, and their old import names still work.
    from kvmlab.kvm import KvmIoctlError as ioctl_from_kvm
    from kvmlab.kvm import KvmUnavailableError as unavailable_from_kvm
    from kvmlab.kvm.syscall import KvmIoctlError as ioctl_from_syscall
    from kvmlab.kvm.system import KvmUnavailableError as unavailable_from_system
    from kvmlab.vstate import GuestRequestedExit
    from kvmlab.vstate.bus import GuestRequestedExit as exit_from_bus

    assert ioctl_from_kvm is ioctl_from_syscall is errors.KvmIoctlError is kvmlab.KvmIoctlError
    assert unavailable_from_kvm is unavailable_from_system is errors.KvmUnavailableError is kvmlab.KvmUnavailableError
    assert GuestRequestedExit is exit_from_bus and GuestRequestedExit.__module__ == "kvmlab.errors"


#: the built-in exceptions kvmlab code must not raise bare (AssertionError, NotImplementedError
#: and re-raises of a caught error are not "on purpose" in this sense)
BUILTIN_ERRORS = {"Exception", "RuntimeError", "ValueError", "KeyError", "TypeError", "OSError", "IndexError", "LookupError", "IOError"}


def test_nothing_in_kvmlab_raises_a_bare_built_in_error():
    """Raised on purpose means a KvmlabError (the built-in stays a second base where it fits)."""
    import ast
    from pathlib import Path

    found = []
    for path in Path(kvmlab.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", None) in BUILTIN_ERRORS:
                found.append(f"{path.name}:{node.lineno}: raise {node.exc.func.id}")
    assert found == []


def test_kvm_ioctl_error_is_an_os_error_with_errno_and_survives_pickling():
    err = errors.KvmIoctlError(errno.EINTR, "KVM_RUN", "kicked")
    assert isinstance(err, errors.KvmlabError) and isinstance(err, OSError)
    assert err.errno == errno.EINTR and err.ioctl_name == "KVM_RUN"
    assert "KVM_RUN failed" in str(err) and "[EINTR]" in str(err) and "(kicked)" in str(err)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.KvmIoctlError and copy.errno == errno.EINTR and copy.ioctl_name == "KVM_RUN" and str(copy) == str(err)


def test_a_real_failed_ioctl_raises_kvm_ioctl_error():
    from kvmlab.kvm.syscall import ioctl

    with open("/dev/null", "rb") as null:
        with pytest.raises(errors.KvmlabError) as caught:
            ioctl(null.fileno(), 0xAE00, 0, name="KVM_GET_API_VERSION")  # not a KVM fd: ENOTTY
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOTTY


def test_kvm_unavailable_is_a_kvmlab_error_and_a_runtime_error(tmp_path):
    from kvmlab.kvm import Kvm

    with pytest.raises(errors.KvmlabError) as caught:
        Kvm(str(tmp_path / "no-kvm-here"))
    assert type(caught.value) is errors.KvmUnavailableError and isinstance(caught.value, RuntimeError)
    assert "does not exist" in str(caught.value)


class _FakePeripherals:
    def __init__(self, index):
        from kvmlab.metrics import VcpuMetrics

        self.metrics, self.trace = VcpuMetrics(index), None


def _registry(vcpus=2):
    from kvmlab.metrics.registry import MetricsRegistry

    return MetricsRegistry([_FakePeripherals(i) for i in range(vcpus)], None)


def test_unknown_vcpu_and_metric_are_kvmlab_errors_and_key_errors():
    metrics = _registry()
    with pytest.raises(errors.UnknownVcpuError, match="vCPU 99 is not in this machine; valid vCPUs: 0, 1") as caught:
        metrics.vcpu(99)
    assert isinstance(caught.value, errors.KvmlabError) and isinstance(caught.value, KeyError)
    assert str(caught.value).startswith("vCPU 99")  # the message, not KeyError's quoted repr
    with pytest.raises(errors.UnknownMetricError, match="no metric 'nope'") as caught:
        metrics.spec("nope")
    assert isinstance(caught.value, errors.KvmlabError) and isinstance(caught.value, KeyError)
    assert issubclass(errors.UnknownMetricError, errors.NotFoundError) and issubclass(errors.UnknownVcpuError, errors.NotFoundError)


def test_bad_sample_rate_ring_and_trace_sizes_are_config_errors():
    from kvmlab.metrics.ring import RingBuffer
    from kvmlab.metrics.sampler import Sampler
    from kvmlab.metrics.trace import TraceBuffer

    for make in (lambda: Sampler(lambda: None, 0), lambda: Sampler(lambda: None, 5000)):
        with pytest.raises(errors.ConfigError, match="sample rate"):
            make()
    with pytest.raises(errors.ConfigError, match="ring capacity"):
        RingBuffer(1, 0)
    with pytest.raises(errors.ConfigError, match="trace capacity"):
        TraceBuffer(0, 0)
    assert issubclass(errors.ConfigError, ValueError)  # callers catching ValueError still do


def test_cpuid_leaf_not_set_is_a_kvmlab_key_error():
    from kvmlab.vstate.cpu_state import CpuConfiguration

    config = CpuConfiguration(vcpu=0, cpuid=[], msrs={})
    with pytest.raises(errors.UnknownCpuidLeafError, match="CPUID leaf 0x1.0 is not set") as caught:
        config.cpuid_leaf(1)
    assert isinstance(caught.value, errors.KvmlabError) and isinstance(caught.value, KeyError)


def test_state_errors_are_not_config_errors():
    assert not issubclass(errors.MachineStateError, errors.ConfigError) and issubclass(errors.MachineStateError, RuntimeError)


def test_a_vm_given_vcpus_twice_is_a_state_error():
    from kvmlab.vstate.vm import Vm

    vm = Vm.__new__(Vm)
    vm.vcpus = [object()]  # already built
    with pytest.raises(errors.MachineStateError, match="already has its vCPUs") as caught:
        vm.create_vcpus(1)
    assert not isinstance(caught.value, errors.ConfigError)


def test_cli_catches_the_base_class_and_reports_bugs_as_internal(monkeypatch, capsys):
    def fail(error):
        def command(args):
            raise error
        return command

    parser = cli.build_parser()
    for error, expected in (
        (errors.UnknownMetricError("no metric 'x'; valid metrics: a"), "kvmlab info: error: no metric 'x'; valid metrics: a"),
        (errors.KvmUnavailableError("/dev/kvm does not exist"), "kvmlab info: error: /dev/kvm does not exist"),
        (errors.KvmIoctlError(errno.EBADF, "KVM_RUN"), "kvmlab info: error: [Errno 9] KVM_RUN failed"),
        (ZeroDivisionError("oops"), "kvmlab info: internal error: ZeroDivisionError: oops"),
    ):
        monkeypatch.setattr(cli, "build_parser", lambda: parser)
        parser.set_defaults(func=fail(error))
        for action in parser._subparsers._group_actions[0].choices.values():
            action.set_defaults(func=fail(error))
        monkeypatch.delenv("KVMLAB_DEBUG", raising=False)
        assert cli.main(["info"]) == 1
        assert capsys.readouterr().err.startswith(expected)
