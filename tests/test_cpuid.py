"""CPUID as the guest sees it: each vCPU its own APIC ID and the machine's topology, and masked
feature bits really gone. The guest runs CPUID itself (KVM answers it in the kernel)."""

from __future__ import annotations

import pytest

from kvmlab import programs
from kvmlab.errors import ConfigError
from kvmlab.guest.modes import results_address
from kvmlab.kvm.system import Kvm

pytestmark = pytest.mark.kvm

CPUID_PROBE = programs.from_source(
    """
    ; each vCPU stores what CPUID tells it into its 16 bytes of the results area
    mov esi, edi
    shl esi, 4
    add esi, RESULTS
    mov eax, 1
    xor ecx, ecx
    cpuid
    mov [esi], ebx          ; leaf 1 EBX: initial APIC ID (31:24), logical processors (23:16)
    mov [esi + 4], ecx      ; leaf 1 ECX: features (bit 31: running under a hypervisor)
    mov eax, 0xb
    xor ecx, ecx
    cpuid
    mov [esi + 8], edx      ; leaf 0xB: x2APIC ID
    mov eax, 0xb
    mov ecx, 1
    cpuid
    mov [esi + 12], ebx     ; leaf 0xB level 1 (cores): processors at this level
    hlt
    """,
    name="cpuid_probe.asm",
)


def probe(machines, vcpus: int, **kwargs) -> list[tuple[int, int, int, int]]:
    m = machines(vcpus=vcpus, **kwargs)
    m.load(CPUID_PROBE, mode="protected")
    m.start()
    m.wait(timeout=10)
    return [tuple(m.memory.read_u32(results_address(i) + 4 * k) for k in range(4)) for i in range(vcpus)]


def test_every_vcpu_sees_its_own_apic_id_and_the_core_count(machines):
    seen = probe(machines, 4)
    for index, (leaf1_ebx, leaf1_ecx, x2apic_id, cores) in enumerate(seen):
        assert leaf1_ebx >> 24 == index and (leaf1_ebx >> 16) & 0xFF == 4
        assert x2apic_id == index and cores == 4
        assert leaf1_ecx & (1 << 31), "the hypervisor bit tells the guest it is virtual"


def test_masked_feature_bits_are_gone_for_the_guest(machines):
    """Masks clear bits of KVM's supported CPUID. (Under kvm_pvm the guest also sees leaf-1 bits
    the supported list lacks, SSE3 among them, and a mask cannot hide those: measured.)"""
    with Kvm() as kvm:
        supported = next(e for e in kvm.get_supported_cpuid() if e.function == 1).ecx & ~(1 << 31)
    offered = [bit for bit in range(31) if supported >> bit & 1]
    assert offered, "KVM offers some leaf-1 ECX feature here"
    hide = (1 << offered[0]) | (1 << offered[-1]) | (1 << 31)
    unmasked = probe(machines, 1)[0][1]
    assert unmasked & hide == hide
    masked = probe(machines, 1, cpuid_mask={(1, 0, "ecx"): hide})[0][1]
    assert masked == unmasked & ~hide


@pytest.mark.parametrize(
    "mask, message",
    [
        ([1, 0, "ecx"], r"need a dict \{\(function, subleaf, register\): bits to clear\}"),
        ({(1, 0, "exc"): 1}, r"the register must be one of eax, ebx, ecx, edx"),
        ({(1, 0): 1}, r"need \(function, subleaf, register\)"),
        ({(1, 0, "ecx"): 0}, r"need the bits to clear, a 32-bit mask that is not 0"),
        ({(0x4FFFFFFF, 0, "eax"): 1}, r"leaf 0x4fffffff subleaf 0 is not in KVM's supported CPUID here"),
        ({(0xB, 0, "edx"): 1}, r"leaf 0xb is the topology kvmlab writes for each vCPU"),
    ],
)
def test_bad_masks_are_refused_at_once(machines, mask, message):
    with pytest.raises(ConfigError, match=message):
        machines(vcpus=1, cpuid_mask=mask)


@pytest.mark.emulated
def test_the_emulated_engine_refuses_a_mask(machines):
    with pytest.raises(ConfigError, match="cannot be masked; use engine='kvm'"):
        machines(vcpus=1, engine="emulated", cpuid_mask={(1, 0, "ecx"): 1})
