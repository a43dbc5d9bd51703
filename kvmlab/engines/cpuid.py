"""CPUID for each vCPU: KVM's supported CPUID, with each vCPU's APIC ID and the topology.

KVM hands back what the host and KVM can offer; a VMM must still say which CPU is which
(Firecracker's ``cpuid normalization``). Without it every vCPU reports APIC ID 0 and an SMP
guest cannot tell its CPUs apart. Topology here is flat: ``count`` cores, one thread each.
"""

from __future__ import annotations

from ..checks import is_whole_number
from ..errors import ConfigError
from ..kvm import structs as s

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1

LEAF_FEATURES = 0x1
LEAF_TOPOLOGY = 0xB
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_AMD_TOPOLOGY = 0x8000001E
EDX_HTT = 1 << 28
ECX_HYPERVISOR = 1 << 31
REGISTERS = ("eax", "ebx", "ecx", "edx")

CpuidMask = dict[tuple[int, int, str], int]


def validate_mask(mask) -> CpuidMask | None:
    """Checks a ``cpuid_mask`` the user wrote: ``{(function, subleaf, "ecx"): bits_to_clear}``."""
    if mask is None:
        return None
    example = "e.g. {(0x1, 0, 'ecx'): 1 << 28} hides AVX"
    if not isinstance(mask, dict):
        raise ConfigError(f"cpuid_mask={mask!r}: need a dict {{(function, subleaf, register): bits to clear}}, {example}")
    for key, bits in mask.items():
        if not (isinstance(key, tuple) and len(key) == 3 and all(is_whole_number(k) for k in key[:2])):
            raise ConfigError(f"cpuid_mask key {key!r}: need (function, subleaf, register), {example}")
        if key[2] not in REGISTERS:
            raise ConfigError(f"cpuid_mask key {key!r}: the register must be one of {', '.join(REGISTERS)}")
        if not is_whole_number(bits) or not 0 < bits <= 0xFFFFFFFF:
            raise ConfigError(f"cpuid_mask[{key!r}] = {bits!r}: need the bits to clear, a 32-bit mask that is not 0")
    return dict(mask)


def check_mask_against(mask: CpuidMask | None, supported: list[s.kvm_cpuid_entry2]) -> None:
    """A mask for a leaf KVM does not offer would silently do nothing: refuse it."""
    present = {(entry.function, entry.index) for entry in supported}
    present |= {(function, subleaf) for function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2) for subleaf in range(3)}
    for function, subleaf, register in mask or {}:
        if (function, subleaf) not in present and (function, 0) not in present:
            raise ConfigError(f"cpuid_mask: leaf {function:#x} subleaf {subleaf} is not in KVM's supported CPUID here, so masking it does nothing")
        if function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
            raise ConfigError(f"cpuid_mask: leaf {function:#x} is the topology kvmlab writes for each vCPU; it cannot be masked")


def _bits_for(count: int) -> int:
    return max(count - 1, 0).bit_length()


def _topology_subleaves(function: int, apic_id: int, count: int) -> list[s.kvm_cpuid_entry2]:
    """Leaf 0xB / 0x1F: level 0 = SMT (1 thread), level 1 = core (``count`` cores), then end."""
    core_shift = _bits_for(count)
    levels = [
        (0, 1, 1),  # (x2APIC shift, logical processors at this level, level type SMT)
        (core_shift, count, 2),  # level type core
    ]
    entries = []
    for subleaf, (shift, processors, level_type) in enumerate(levels):
        entries.append(
            s.kvm_cpuid_entry2(
                function=function,
                index=subleaf,
                flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax=shift,
                ebx=processors,
                ecx=(level_type << 8) | subleaf,
                edx=apic_id,
            )
        )
    entries.append(
        s.kvm_cpuid_entry2(function=function, index=len(levels), flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX, ecx=len(levels), edx=apic_id)
    )
    return entries


def cpuid_for_vcpu(
    supported: list[s.kvm_cpuid_entry2],
    index: int,
    count: int,
    mask: dict[tuple[int, int, str], int] | None = None,
) -> list[s.kvm_cpuid_entry2]:
    """The CPUID entries to set on vCPU ``index`` of ``count``.

    ``mask`` clears feature bits: ``{(function, subleaf, "ecx"): bits_to_clear}``.
    """
    apic_id = index
    out: list[s.kvm_cpuid_entry2] = []
    topology_done: set[int] = set()
    for original in supported:
        entry = s.copy_struct(original)
        function = entry.function
        if function == LEAF_FEATURES:
            entry.ebx = (entry.ebx & 0x0000FFFF) | (min(count, 255) << 16) | ((apic_id & 0xFF) << 24)
            entry.edx = entry.edx | EDX_HTT if count > 1 else entry.edx & ~EDX_HTT
            entry.ecx |= ECX_HYPERVISOR
        elif function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
            if function not in topology_done:
                topology_done.add(function)
                out.extend(_topology_subleaves(function, apic_id, count))
            continue
        elif function == LEAF_AMD_TOPOLOGY:
            entry.eax = apic_id
        if mask:
            for register in ("eax", "ebx", "ecx", "edx"):
                bits = mask.get((function, entry.index, register))
                if bits:
                    setattr(entry, register, getattr(entry, register) & ~bits)
        out.append(entry)
    return out
