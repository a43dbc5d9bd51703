"""``kvmlab``: the command line. Errors are one clear line and a non-zero exit status.

    kvmlab info                     KVM version, capabilities, limits; which engines work here
    kvmlab run FILE.asm [...]       run your program, write metrics / a trace / a plot
    kvmlab demo [--seconds S]       two vCPUs, the bundled programs, a table, a PNG, a DataFrame
    kvmlab boot KERNEL.elf [...]    boot a Multiboot kernel; exit status (code << 1) | 1, like QEMU
    kvmlab bench                    exit throughput against C, scaling, kick latency
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from . import __version__
from .engines.select import CHOICES as ENGINE_CHOICES
from .errors import KvmlabError
from .metrics.export import check_output_path
from .vstate.exits import ExitCode


class CliError(KvmlabError):
    """A bad command line argument found before any work."""


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# --- info -----------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from .engines import ENGINES, EngineUnavailableError, resolve

    print(f"kvmlab {__version__}")
    for engine in ENGINES:
        reason = engine.unavailable_reason()
        if reason is not None:
            print(f"engine {engine.name}: unavailable: {reason}")
            continue
        print(f"engine {engine.name}: works ({engine.status()})")
        opened = engine()
        try:
            for line in opened.describe_lines():
                print(f"  {line}")
        finally:
            opened.close()
    try:
        print(f"engine='auto' chooses: {resolve('auto')}" + (" (KVMLAB_ENGINE)" if os.environ.get("KVMLAB_ENGINE") else ""))
    except EngineUnavailableError as err:
        print(f"engine='auto' chooses nothing: {err}")
    return 0


# --- shared pieces -----------------------------------------------------------------------------------


class _LevelFormatter(logging.Formatter):
    """``kvmlab boot: info: ...``: the CLI's own error style, so a warning says "warning"."""

    def format(self, record: logging.LogRecord) -> str:
        record.level = record.levelname.lower()
        return super().format(record)


@contextlib.contextmanager
def verbose_log(command: str, verbose: bool) -> Iterator[None]:
    """With ``--verbose``, kvmlab's info log on stderr while the command runs: each distinct
    access to absent hardware (once per address, up to the machine's cap), vCPU exits. Without
    it nothing is set up, and info lines go nowhere: a guest probing for hardware a PC may
    lack is not a VMM failure, and test runners written for QEMU judge stderr."""
    if not verbose:
        yield
        return
    logger = logging.getLogger("kvmlab")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter(f"kvmlab {command}: %(level)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Progress:
    """A one-line progress bar on stderr for runs longer than a second."""

    def __init__(self, seconds: float, label: str):
        self.seconds = seconds
        self.label = label
        # A bar redrawn with \r only makes sense on a terminal (KVMLAB_PROGRESS=1 forces it).
        terminal = sys.stderr.isatty() or os.environ.get("KVMLAB_PROGRESS") == "1"
        self.enabled = terminal and seconds > 1
        self._shown = 0.0

    def show(self, elapsed: float, detail: str = "") -> None:
        if not self.enabled or elapsed - self._shown < 0.25:
            return
        self._shown = elapsed
        done = min(elapsed / self.seconds, 1.0)
        bar = "#" * int(done * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {elapsed:4.1f}/{self.seconds:g} s {detail}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._shown:
            sys.stderr.write("\n")


def run_for(machine, seconds: float, progress: Progress, during=None) -> None:
    """Lets the machine run ``seconds`` (or until it stops by itself), calling
    ``during(elapsed)`` a few times a second."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds or machine.exit is not None:
            break
        if during:
            during(elapsed)
        if progress.enabled:
            exits = sum(v.exit_mmio_read + v.exit_mmio_write for v in machine.metrics)
            progress.show(elapsed, f"{exits:,} MMIO exits")
        time.sleep(0.05)
    progress.close()


def vcpu_table(machine, seconds: float) -> str:
    totals = machine.metrics.totals()
    kernel = "kvm.mmio_exits" in totals.columns
    lines = [f"  {'vCPU':>4}  {'state':<18} {'MMIO reads':>11} {'MMIO writes':>11} {'port in':>8} {'port out':>8} "
             f"{'kicks':>6} {'MMIO/s':>9}" + (f" {'KVM mmio_exits':>15}" if kernel else "")]
    for status in machine.states:
        row = {name: int(totals.at[str(status.index), name]) for name in
               ("exit_mmio_read", "exit_mmio_write", "exit_io_in", "exit_io_out", "interrupted") + (("kvm.mmio_exits",) if kernel else ())}
        mmio = row["exit_mmio_read"] + row["exit_mmio_write"]
        line = (f"  {status.index:>4}  {str(status):<18} {row['exit_mmio_read']:>11,} {row['exit_mmio_write']:>11,} "
                f"{row['exit_io_in']:>8,} {row['exit_io_out']:>8,} {row['interrupted']:>6,} {mmio / seconds:>9,.0f}")
        if kernel:
            line += f" {row['kvm.mmio_exits']:>15,}"
        lines.append(line)
    return "\n".join(lines)


def _tabular_path(path: str) -> Path:
    return check_output_path(path, (".parquet", ".csv"))


def _png_path(path: str) -> Path:
    return check_output_path(path, (".png",))


def _dataframe_path(folder: Path, stem: str) -> Path:
    """Parquet where pyarrow is installed, else CSV."""
    try:
        import pyarrow  # noqa: F401

        return folder / f"{stem}.parquet"
    except ImportError:
        return folder / f"{stem}.csv"


# --- run -----------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from . import Machine, programs

    source_path = Path(args.file)
    try:
        source = source_path.read_text()
    except OSError as err:
        raise CliError(f"cannot read {args.file!r}: {err.strerror}") from None
    out = _tabular_path(args.out) if args.out else None
    plot = _png_path(args.plot) if args.plot else None
    trace_out = out.with_name(f"{out.stem}.trace{out.suffix}") if (out and args.trace) else None
    if args.trace and out is None:
        raise CliError("--trace needs --out: the trace is written next to the metrics (NAME.trace.EXT)")

    with Machine(vcpus=args.vcpus, memory_mib=args.memory_mib, trace=args.trace, engine=args.engine) as m:
        m.load(programs.from_source(source, name=source_path.name), mode=args.mode)
        m.start()
        run_for(m, args.seconds, Progress(args.seconds, f"running {source_path.name}"))
        exit_code = m.exit
        m.stop()
        ran = m.metrics.to_dataframe(metrics=["exit_mmio_write"], vcpus=["0"])["elapsed_s"].max() or args.seconds
        how = f"stopped by itself: exit code {int(exit_code)} ({exit_code.reason})" if exit_code is not None else f"stopped after {args.seconds:g} s"
        print(f"{source_path.name} on {args.vcpus} vCPU(s), {args.mode} mode, engine {m.engine}: {how}")
        print(vcpu_table(m, ran))
        if m.console.text:
            print("console:")
            for line in m.console.text.splitlines():
                print(f"  {line}")
        if out:
            m.metrics.export(out)
            print(f"metrics ({m.metrics.samples} samples, tidy): {out}")
        if trace_out:
            m.metrics.export(trace_out, what="trace")
            dropped = sum(m.metrics.trace_dropped.values())
            print(f"exit trace ({len(m.metrics.trace_dataframe()):,} rows, {dropped:,} dropped): {trace_out}")
        if plot:
            from .plotting import RatePlot

            RatePlot(m.metrics, window_s=None).save(plot)
            print(f"plot: {plot}")
    return 0


# --- demo ----------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import Machine, programs
    from .plotting import RatePlot

    folder = Path(args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    frame_path = _dataframe_path(folder, "metrics")
    check_output_path(frame_path)
    plot_path = _png_path(str(folder / "exits.png"))
    totals_path = check_output_path(folder / "totals.csv")

    with Machine(vcpus=1, engine=args.engine) as probe:
        print(f"engine: {probe.engine_note}\n")
    print("1. hello.asm on 2 vCPUs, real mode: each vCPU prints over the serial port (port I/O exits), then halts")
    with Machine(vcpus=2, memory_mib=2, engine=args.engine) as m:
        m.load(programs.hello(), mode="real")
        m.start()
        code = m.wait(10)
        for line in m.console.text.splitlines():
            print(f"   serial> {line}")
        print(f"   exit code {int(code)} ({code.reason})")
        print(vcpu_table(m, 1.0))

    third = args.seconds / 3
    print(f"\n2. mailbox_pingpong.asm on 2 vCPUs, protected mode, for {args.seconds:g} s: the vCPUs hand a number back and")
    print(f"   forth through an MMIO device; vCPU 1 is paused from {third:.1f} s to {2 * third:.1f} s")
    with Machine(vcpus=2, memory_mib=2, engine=args.engine) as m:
        m.load(programs.mailbox_pingpong(rounds=0), mode="protected")
        m.start()
        events = []

        def script(elapsed: float) -> None:
            if elapsed >= third and not events:
                m.pause(1)
                events.append(("paused", m.mailbox.pong))
            elif elapsed >= 2 * third and len(events) == 1:
                events.append(("resumed", m.mailbox.pong))
                m.resume(1)

        run_for(m, args.seconds, Progress(args.seconds, "   running"), during=script)
        m.pause()
        m.stop()
        print(f"   rounds completed: {m.mailbox.pong:,}" + "".join(f"; {what} at round {n:,}" for what, n in events))
        print(vcpu_table(m, args.seconds))
        m.metrics.export(frame_path)
        m.metrics.export(totals_path, what="totals")
        RatePlot(m.metrics, window_s=None).save(plot_path)
    print(f"\nplot of per-vCPU MMIO exit rates: {plot_path}")
    print(f"DataFrame (tidy time series, {frame_path.suffix[1:]}): {frame_path}")
    print(f"per-vCPU totals (csv): {totals_path}")
    return 0


# --- boot ----------------------------------------------------------------------------------------

#: exit status when the guest never wrote the debug-exit port before --timeout (as timeout(1))
TIMEOUT_STATUS = 124
#: exit status after a triple fault: QEMU's with ``-no-reboot`` (how test runners drive it),
#: which exits 0 on a triple fault. Machine's code is ExitCode.TRIPLE_FAULT, an error; the CLI
#: keeps QEMU's status so runners see what they would under QEMU. No debug-exit write can give
#: 0 (``(code << 1) | 1`` is odd), so runners already read 0 as "did not report success".
TRIPLE_FAULT_STATUS = 0


def _cmd_boot(args: argparse.Namespace) -> int:
    from . import Machine

    with Machine(vcpus=args.vcpus, memory_mib=args.memory_mib, engine=args.engine) as m:
        m.boot(args.kernel, cmdline=args.append, initrd=args.initrd)
        m.start()
        version, deadline = 0, time.monotonic() + args.timeout
        while m.exit is None and time.monotonic() < deadline:
            text, version = m.console.read_since(version)
            sys.stdout.write(text)
            sys.stdout.flush()
            time.sleep(0.02)
        if m.exit is None:
            m.stop()
            sys.stdout.write(m.console.read_since(version)[0])
            print(f"kvmlab boot: the guest did not write the debug-exit port (0xf4) within {args.timeout:g} s; stopped it", file=sys.stderr)
            return TIMEOUT_STATUS
        sys.stdout.write(m.console.read_since(version)[0])
        sys.stdout.flush()
        code = m.exit
        if m.debug_exit.last_code is None:
            print(f"kvmlab boot: the guest stopped without writing the debug-exit port: {code.reason}", file=sys.stderr)
            if int(code) == ExitCode.TRIPLE_FAULT:
                return TRIPLE_FAULT_STATUS
            return 1 if int(code) else 0
        # QEMU's isa-debug-exit convention: the process exits with (code << 1) | 1
        return ((m.debug_exit.last_code << 1) | 1) & 0xFF


# --- bench ---------------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    with_c = not args.no_c
    iterations = args.iterations
    print(f"exit throughput: real-mode mmio_counter, {iterations:,} iterations ({bench.exits_for(iterations):,} exits) a run, "
          f"{args.rounds} interleaved rounds, medians")
    progress = Progress(2.0, "   measuring")
    rounds = bench.throughput(iterations, args.rounds, with_c=with_c, progress=lambda done, total: progress.show(2.0 * done / total + 1e-9))
    progress.close()
    labels = {"c": "C reference (exit_loop.c)", "bare": "bare ctypes KVM_RUN loop", "kvmlab": "kvmlab, metrics on",
              "kvmlab_trace": "kvmlab, exit trace on", "kvmlab_no_sampler": "kvmlab, sampler off"}
    for variant, label in labels.items():
        if variant in rounds.values:
            ratio = f"  {rounds.ratio(variant, 'c'):.2f} of C" if with_c else ""
            print(f"   {label:<28} {rounds.median(variant):>10,.0f} exits/s{ratio}")
    print(f"   sampler at 10 Hz: {rounds.ratio('kvmlab', 'kvmlab_no_sampler'):.3f} of the throughput without it")
    scaling = bench.scaling(iterations, args.rounds, with_c=with_c)
    print("scaling, 2 vCPUs on 2 cores / 1 vCPU (exits/s):")
    for name in ("kvmlab", "bare", "c"):
        if f"{name}_1" in scaling.values:
            print(f"   {name:<8} {scaling.ratio(f'{name}_2', f'{name}_1'):.2f}x")
    latencies = bench.kick_latency(4, args.kick_cycles)
    print(f"kick latency, 4 vCPUs in a loop with no exits, {len(latencies)} pause-all cycles: "
          f"p50 {bench.percentile(latencies, 0.5) * 1e3:.2f} ms, p99 {bench.percentile(latencies, 0.99) * 1e3:.2f} ms")
    if with_c:
        cycles = bench.exit_cycles(max(iterations // 10, 1000), args.rounds)
        print(f"cycles per port-I/O exit, timed by the guest (RDTSC): kvmlab {cycles.median('kvmlab_mean'):,.0f}, "
              f"C {cycles.median('c_mean'):,.0f}: {cycles.ratio('kvmlab_mean', 'c_mean'):.2f}x C")
    return 0


# --- main ----------------------------------------------------------------------------------------


VERBOSE_HELP = "log on stderr what kvmlab sees: each distinct access to absent hardware, vCPU exits"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmlab", description="Run real KVM vCPUs and see what a VMM does.")
    parser.add_argument("--version", action="version", version=f"kvmlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="KVM version, capabilities, limits; which engines work here").set_defaults(func=_cmd_info)

    run = sub.add_parser("run", help="run an assembly program on N vCPUs and write its exit metrics")
    run.add_argument("file", metavar="FILE.asm")
    run.add_argument("--mode", choices=["real", "protected", "long"], default="real")
    run.add_argument("--vcpus", type=positive_int, default=1)
    run.add_argument("--memory-mib", type=positive_float, default=2)
    run.add_argument("--seconds", type=positive_float, default=5.0, help="stop after this long (sooner if the guest stops)")
    run.add_argument("--out", metavar="METRICS.parquet|.csv", help="the sampled metrics, tidy")
    run.add_argument("--plot", metavar="EXITS.png", help="per-vCPU MMIO exit rates over time")
    run.add_argument("--trace", action="store_true", help="also record one row per exit (written as NAME.trace.EXT)")
    run.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    run.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="two vCPUs running the bundled programs, headless: a table, a PNG, a DataFrame")
    demo.add_argument("--seconds", type=positive_float, default=4.0, help="how long the MMIO part runs")
    demo.add_argument("--out-dir", default="out", help="where the plot and DataFrames go (created)")
    demo.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    demo.set_defaults(func=_cmd_demo)

    boot = sub.add_parser("boot", help="boot a Multiboot v1 kernel (serial on stdout, exit status (code << 1) | 1)")
    boot.add_argument("kernel", metavar="KERNEL.elf")
    boot.add_argument("--vcpus", type=positive_int, default=1)
    boot.add_argument("--memory-mib", type=positive_float, default=64)
    boot.add_argument("--append", default="", help="the kernel command line (after its own name)")
    boot.add_argument("--initrd", metavar="FILE", help="a module for the kernel (multiboot modules)")
    boot.add_argument("--timeout", type=positive_float, default=60.0, help=f"stop after this long (exit status {TIMEOUT_STATUS})")
    boot.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    boot.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    boot.set_defaults(func=_cmd_boot)

    bench = sub.add_parser("bench", help="exit throughput against a C loop, 2-vCPU scaling, kick latency")
    bench.add_argument("--iterations", type=positive_int, default=100_000)
    bench.add_argument("--rounds", type=positive_int, default=3)
    bench.add_argument("--kick-cycles", type=positive_int, default=200)
    bench.add_argument("--no-c", action="store_true", help="skip the C reference (no gcc)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with verbose_log(args.command, getattr(args, "verbose", False)):
            return args.func(args)
    except KvmlabError as err:  # everything kvmlab raises on purpose (errors.py); the rest is a bug
        one_line = ": ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"kvmlab {args.command}: error: {one_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kvmlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (kvmlab info | head)
        sys.stderr.close()
        return 0
    except Exception as err:  # a bug: still one line, the traceback on request
        if os.environ.get("KVMLAB_DEBUG"):
            raise
        print(f"kvmlab {args.command}: internal error: {type(err).__name__}: {err} (KVMLAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
