"""The ``kvmlab`` command: real subprocesses, real KVM."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.kvm


def kvmlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmlab", *args], capture_output=True, text=True, timeout=timeout)


def test_info_lists_kvm_facts():
    result = kvmlab("info")
    assert result.returncode == 0, result.stderr
    assert "engine kvm: works" in result.stdout
    assert "KVM API version 12" in result.stdout and "BINARY_STATS_FD" in result.stdout


def test_demo_prints_what_each_vcpu_did():
    result = kvmlab("demo", "--seconds", "0.4")
    assert result.returncode == 0, result.stderr
    assert "serial> Hello from vCPU 0\n" in result.stdout and "serial> Hello from vCPU 1\n" in result.stdout
    assert "Finished(0: HLT)" in result.stdout
    assert "states [Running, Paused]" in result.stdout


def test_errors_are_one_line_without_traceback():
    result = kvmlab("demo", "--seconds", "-1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
