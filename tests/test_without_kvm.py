"""What a machine without KVM sees (as on Binder): clear words, no traceback, nothing hangs.
KVM is hidden with KVMLAB_KVM_PATH, in a subprocess so this process keeps its KVM."""

from __future__ import annotations

import os
import subprocess
import sys


def run_without_kvm(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KVMLAB_KVM_PATH": "/nonexistent/kvm"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_notebooks_first_line_says_kvm_is_missing():
    result = run_without_kvm("import kvmlab; print(kvmlab.engine_summary())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("KVM is missing here, so the cells that start a Machine will fail:")
    assert "/nonexistent/kvm does not exist" in result.stdout


def test_a_machine_says_why_it_cannot_start():
    code = "from kvmlab import Machine, KvmUnavailableError\ntry:\n    Machine()\nexcept KvmUnavailableError as e:\n    print('error:', e)"
    result = run_without_kvm(code)
    assert "error: /nonexistent/kvm does not exist: this machine has no KVM" in result.stdout, result.stdout + result.stderr


def test_info_says_which_engines_work():
    result = subprocess.run([sys.executable, "-m", "kvmlab", "info"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KVMLAB_KVM_PATH": "/nonexistent/kvm"})  # fmt: skip
    assert result.returncode == 0
    assert "engine kvm: unavailable: /nonexistent/kvm does not exist" in result.stdout
