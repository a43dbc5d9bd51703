"""The ``kvmlab`` command: real subprocesses, real KVM, real files."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest

from kvmlab.cli import main
from kvmlab.guest.kernels import smp_demo
from kvmlab.guest.programs import _source

from .procfs import open_fds
from .tinydisk import CHUNK, fill_up, names_in

pytestmark = pytest.mark.kvm


def kvmlab(*args: str, timeout: float = 120, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvmlab", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}
    )


def test_info_lists_kvm_facts():
    result = kvmlab("info")
    assert result.returncode == 0, result.stderr
    assert "engine kvm: works" in result.stdout
    assert "KVM API version 12" in result.stdout and "BINARY_STATS_FD" in result.stdout


def test_demo_prints_a_table_and_writes_a_plot_and_dataframes(tmp_path):
    result = kvmlab("demo", "--seconds", "1.5", "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "serial> Hello from vCPU 0\n" in out and "serial> Hello from vCPU 1\n" in out
    assert "Finished(0: HLT)" in out and "KVM mmio_exits" in out
    png = (tmp_path / "out" / "exits.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    frame = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert list(frame.columns) == ["t", "elapsed_s", "vcpu", "metric", "value"] and len(frame) > 1000
    totals = pd.read_csv(tmp_path / "out" / "totals.csv")
    assert totals["vcpu"].astype(str).tolist() == ["0", "1", "all"]
    # kvmlab's MMIO counters equal the kernel's, per vCPU, in what the demo wrote
    for _, row in totals.iterrows():
        assert row["exit_mmio_read"] + row["exit_mmio_write"] == row["kvm.mmio_exits"]


def test_run_writes_metrics_trace_and_plot(tmp_path):
    program = tmp_path / "counter.asm"
    program.write_text(".equ ITERATIONS, 500\n.equ READ_EVERY, 4\n" + _source("mmio_counter.asm"))
    out, plot = tmp_path / "m.parquet", tmp_path / "exits.png"
    result = kvmlab("run", str(program), "--mode", "long", "--vcpus", "2", "--seconds", "5", "--out", str(out), "--plot", str(plot), "--trace")
    assert result.returncode == 0, result.stderr
    assert "stopped by itself: exit code 0 (every vCPU halted)" in result.stdout
    trace = pd.read_parquet(tmp_path / "m.trace.parquet")
    assert (trace["reason"] == "mmio_write").sum() == 1000 and (trace["reason"] == "mmio_read").sum() == 250
    metrics = pd.read_parquet(out)
    last = metrics[(metrics.metric == "exit_mmio_write") & (metrics.vcpu == "all")]["value"].iloc[-1]
    assert last == 1000
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_run_shows_a_progress_bar_for_longer_runs(tmp_path):
    program = tmp_path / "spin.asm"
    program.write_text(_source("busy_loop.asm"))
    result = kvmlab("run", str(program), "--seconds", "1.6", env={"KVMLAB_PROGRESS": "1"})
    assert result.returncode == 0, result.stderr
    assert "running spin.asm [" in result.stderr and "1.5/1.6 s" in result.stderr
    assert "stopped after 1.6 s" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "/no/such.asm"], "cannot read '/no/such.asm': No such file or directory"),
        (["run", "{asm}", "--out", "/no/such/folder/m.csv"], "the folder '/no/such/folder' does not exist"),
        (["run", "{asm}", "--out", "{tmp}/m.xlsx"], "unknown extension '.xlsx'; use one of .parquet, .csv"),
        (["run", "{asm}", "--plot", "{tmp}/p.jpg"], "unknown extension '.jpg'; use one of .png"),
        (["run", "{asm}", "--trace"], "--trace needs --out"),
        (["run", "{bad}"], "bad.asm: line 2: Invalid mnemonic"),
        (["run", "{asm}", "--vcpus", "5000"], "vcpus=5000: need a whole number from 1 to"),
        (["boot", "/dev/zero"], "the kernel '/dev/zero' is a character device, not a regular file"),
        (["boot", "{asm}", "--initrd", "/dev/zero"], "the initrd '/dev/zero' is a character device, not a regular file"),
        (["boot", "{tmp}"], "is a directory, not a regular file"),
        (["boot", "{asm}", "--initrd", "/no/such.img"], "cannot read the initrd '/no/such.img': No such file or directory"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, args, message):
    asm = tmp_path / "ok.asm"
    asm.write_text("hlt\n")
    bad = tmp_path / "bad.asm"
    bad.write_text("nop\nfrobnicate\n")
    args = [a.format(asm=asm, tmp=tmp_path, bad=bad) for a in args]
    result = kvmlab(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"kvmlab {args[0]}: error: ") and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [asm, bad] or sorted(tmp_path.iterdir()) == sorted([asm, bad]), "no work was done"


@pytest.mark.parametrize(
    "args, message",
    [
        (["/dev/zero"], "the kernel '/dev/zero' is a character device"),  # refused before the VM is built
        (["{demo}", "--memory-mib", "1", "--vcpus", "2"], "demo.elf segment at [0x100000, "),  # after: VM, vCPUs, RAM exist
    ],
    ids=["before-the-vm", "after-the-vm"],
)
def test_a_failed_boot_leaves_no_fd_or_thread_behind(tmp_path, capsys, args, message):
    """In this process, so that what ``kvmlab boot`` opened can be counted: a failed boot
    closes its Machine (the KVM, VM and vCPU fds, guest RAM) and returns status 1."""
    demo = tmp_path / "demo.elf"
    demo.write_bytes(smp_demo())
    before = open_fds()
    assert main(["boot", *(a.format(demo=demo) for a in args)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    gc.collect()
    assert open_fds() == before
    assert [t.name for t in threading.enumerate() if t.name.startswith("kvmlab")] == []


def test_run_out_on_a_full_disk_is_one_line_and_exit_1(tmp_path, tiny_disk):
    program = tmp_path / "counter.asm"
    program.write_text(".equ ITERATIONS, 50\n.equ READ_EVERY, 4\n" + _source("mmio_counter.asm"))
    out = tiny_disk / "m.csv"
    fill_up(tiny_disk, leave=CHUNK)
    result = kvmlab("run", str(program), "--mode", "long", "--seconds", "5", "--out", str(out))
    assert result.returncode == 1
    reason = "No space left on device (errno 28); free some space or choose another folder"
    assert result.stderr.splitlines() == [f"kvmlab run: error: cannot write {out}: {reason}"]
    assert names_in(tiny_disk) == set(), "no metrics file and no temporary file"


def test_argument_errors_exit_2_without_traceback():
    result = kvmlab("demo", "--seconds", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "must be more than 0" in result.stderr


def test_bench_runs_end_to_end_quickly():
    # Small sizes: this proves the command works, not how fast anything is (benchmarks/ does).
    result = kvmlab("bench", "--iterations", "3000", "--rounds", "1", "--kick-cycles", "10", timeout=300)
    assert result.returncode == 0, result.stderr
    for text in ("C reference (exit_loop.c)", "kvmlab, metrics on", "of C", "sampler at 10 Hz", "scaling, 2 vCPUs", "kick latency, 4 vCPUs",
                 "cycles per port-I/O exit, timed by the guest (RDTSC): kvmlab "):
        assert text in result.stdout
