"""What a machine without KVM sees (as on Binder): clear words, no traceback, nothing hangs.
KVM is hidden with KVMLAB_KVM_PATH, in a subprocess so this process keeps its KVM."""

from __future__ import annotations

import os
import subprocess
import sys


def run_without_kvm(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KVMLAB_KVM_PATH": "/nonexistent/kvm"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_notebooks_first_line_says_which_engine_runs_and_why():
    result = run_without_kvm("import kvmlab; print(kvmlab.engine_summary())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Machines run on the emulated engine (Unicorn, a CPU emulator)")
    assert "KVM's own statistics (kvm.*) do not exist" in result.stdout
    assert "(KVM: /nonexistent/kvm does not exist" in result.stdout


def test_auto_falls_back_to_the_emulator_and_kvm_says_why_not():
    code = (
        "from kvmlab import Machine, programs, EngineUnavailableError\n"
        "m = Machine(vcpus=2)\nm.load(programs.hello())\nm.start()\nprint('exit', int(m.wait(10)), m.engine, repr(m.console.text))\nm.close()\n"
        "try:\n    Machine(engine='kvm')\nexcept EngineUnavailableError as e:\n    print('error:', e)"
    )
    result = run_without_kvm(code)
    assert "exit 0 emulated 'Hello from vCPU 0\\nHello from vCPU 1\\n'" in result.stdout, result.stdout + result.stderr
    assert "error: engine='kvm': /nonexistent/kvm does not exist: this machine has no KVM" in result.stdout
    assert "pip install 'kvmlab[emulate]'" in result.stdout


def test_without_the_emulator_either_the_error_says_what_to_install():
    code = (
        "import sys\nsys.modules['unicorn'] = None\n"
        "from kvmlab import Machine, EngineUnavailableError\n"
        "for engine in ('emulated', 'auto'):\n"
        "    try:\n        Machine(engine=engine)\n    except EngineUnavailableError as e:\n        print(engine, 'error:', e)"
    )
    result = run_without_kvm(code)
    assert "emulated error: engine='emulated' needs the unicorn package (GPLv2, an optional extra): pip install 'kvmlab[emulate]'" in result.stdout, result.stdout + result.stderr
    assert "auto error: no engine can run here: KVM: /nonexistent/kvm does not exist" in result.stdout


def test_info_says_which_engines_work():
    result = subprocess.run([sys.executable, "-m", "kvmlab", "info"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KVMLAB_KVM_PATH": "/nonexistent/kvm"})  # fmt: skip
    assert result.returncode == 0
    assert "engine kvm: unavailable: /nonexistent/kvm does not exist" in result.stdout
    assert "engine emulated: works (Unicorn" in result.stdout
    assert "engine='auto' chooses: emulated" in result.stdout
