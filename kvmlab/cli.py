"""``kvmlab``: the command line. Errors are one clear line and a non-zero exit status."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import KvmlabError
from .kvm import KvmUnavailableError


def _cmd_info(args: argparse.Namespace) -> int:
    from .engines import KvmEngine
    from .kvm import kvm_unavailable_reason

    print(f"kvmlab {__version__}")
    reason = kvm_unavailable_reason()
    if reason is not None:
        print(f"engine kvm: unavailable: {reason}")
        return 0
    engine = KvmEngine()
    try:
        facts = engine.describe()
    finally:
        engine.close()
    print("engine kvm: works")
    print(f"  KVM API version {facts['api_version']}, up to {facts['max_vcpus']} vCPUs per VM "
          f"({facts['recommended_vcpus']} recommended), kvm_run mmap {facts['vcpu_mmap_size']} bytes")
    flavour = "kvm_pvm (nested, paravirtualized)" if os.path.exists("/sys/module/kvm_pvm") else next(
        (m for m in ("kvm_intel", "kvm_amd") if os.path.exists(f"/sys/module/{m}")), "unknown"
    )
    print(f"  module: {flavour}")
    present = [name for name, value in facts["capabilities"].items() if value]
    absent = [name for name, value in facts["capabilities"].items() if not value]
    print(f"  capabilities: {', '.join(present)}")
    if absent:
        print(f"  absent: {', '.join(absent)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import Machine, programs

    print("1. hello.asm on 2 vCPUs (real mode): each prints over the serial port, then halts")
    with Machine(vcpus=2, memory_mib=2) as m:
        m.load(programs.hello(), mode="real")
        m.start()
        code = m.wait(10)
        for line in m.console.text.splitlines():
            print(f"   serial> {line}")
        print(f"   exit code {int(code)} ({code.reason})")
        _vcpu_table(m)

    print(f"\n2. mailbox_pingpong.asm on 2 vCPUs (protected mode) for {args.seconds:g} s, vCPU 1 paused half way")
    with Machine(vcpus=2, memory_mib=2) as m:
        m.load(programs.mailbox_pingpong(rounds=0), mode="protected")
        m.start()
        time.sleep(args.seconds / 2)
        m.pause(1)
        rounds = m.mailbox.pong
        time.sleep(args.seconds / 2)
        print(f"   rounds when vCPU 1 was paused: {rounds}, {args.seconds / 2:g} s later: {m.mailbox.pong}; states {m.states}")
        m.pause()
        _vcpu_table(m)
    return 0


def _vcpu_table(machine) -> None:
    header = f"   {'vCPU':>4} {'state':<16} {'mmio rd':>9} {'mmio wr':>9} {'io in':>7} {'io out':>7} {'kicks':>6}"
    print(header)
    for status, metrics in zip(machine.states, machine.metrics):
        print(
            f"   {status.index:>4} {str(status):<16} {metrics.exit_mmio_read:>9} {metrics.exit_mmio_write:>9} "
            f"{metrics.exit_io_in:>7} {metrics.exit_io_out:>7} {metrics.interrupted:>6}"
        )


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmlab", description="Run real KVM vCPUs and see what a VMM does.")
    parser.add_argument("--version", action="version", version=f"kvmlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="KVM version, capabilities, limits; which engines work here").set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="two vCPUs running the bundled programs, headless")
    demo.add_argument("--seconds", type=positive_float, default=2.0, help="how long the ping-pong part runs")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KvmlabError, KvmUnavailableError) as err:
        print(f"kvmlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kvmlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: still one line, the traceback on request
        if os.environ.get("KVMLAB_DEBUG"):
            raise
        print(f"kvmlab {args.command}: internal error: {type(err).__name__}: {err} (KVMLAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
