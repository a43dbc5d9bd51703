; timer_ticks.asm: a timer that ticks inside KVM, and a guest that counts its ticks.
;
; What it shows: interrupts that never leave the kernel. With KVM's in-kernel irqchip the
; timer, the interrupt controller and the wait between ticks all live in KVM: the vCPU
; programs them through ports and MMIO that KVM answers itself, sleeps in HLT inside KVM_RUN,
; and is woken by each tick. Not one exit reaches kvmlab until the program ends.
;
; In real mode the timer is the PC's 8254 PIT (KVM_CREATE_PIT2) on the 8259 PIC: the program
; puts a handler in the interrupt vector table (entry VECTOR), initializes both PICs (ICW1-4 on
; ports 0x20/0x21 and 0xA0/0xA1, IRQ0 at VECTOR), unmasks IRQ0 only, and starts PIT channel 0
; in mode 2, the rate generator (port 0x43, then the count on port 0x40): a tick every
; PIT_COUNT periods of the PIT's 1.193182 MHz clock. Each handler ends with an EOI (0x20 to
; port 0x20). In protected and long mode it is the vCPU's own LAPIC timer (MMIO at LAPIC): an
; IDT (kvmlab's guest library idt.asm) with gates for VECTOR and the spurious vector, the LAPIC
; enabled (spurious-interrupt vector register, SVR bit 8), the PIC masked, the divide
; configuration (LAPIC_DIVIDE), the LVT timer entry in periodic mode at VECTOR and the initial
; count (LAPIC_COUNT, which starts it: KVM's APIC bus ticks once a nanosecond). Each handler
; ends by writing 0 to the EOI register.
;
; Between ticks the vCPU waits in HLT with IF=1. Each tick the handler stamps the time stamp
; counter (RDTSC) into a table, EOIs and returns (idt.asm's INTERRUPT_RETURN, which also says
; why 32-bit code does not use IRET under kvm_pvm). After TICKS stamps vCPU 0 stops its timer,
; writes the cycles from the first tick to the last into its results and ends the machine
; through the debug-exit port (wait() returns 0). With the irqchip a HLT never reaches kvmlab,
; so that OUT is the program's one exit. The host turns cycles into time with the TSC
; frequency KVM reports (KVM_GET_TSC_KHZ): programs.timer_report(m) gives the period and its
; jitter.
;
; Needs the in-kernel irqchip (load() creates it). Only vCPU 0 keeps time.
;
; On entry: DI = this vCPU's index.
; Results (16 bytes per vCPU at RESULTS): dword 0 = ticks counted, dwords 1-2 = TSC cycles
; from the first tick to the last (64-bit), dword 3 = the address of the TICKS stamps (8 bytes
; each, the TSC at each tick).

.include "idt.asm"

.equ SPURIOUS, 0xFF                     ; the LAPIC's spurious vector (its low 4 bits must be 1s)
.equ LAST, (TICKS - 1) * 8              ; the last stamp's offset in the table

start:
    test edi, edi
    jnz others
    cli
.if BITS == 16
    xor ax, ax
    mov ds, ax                          ; the IVT and the results are at segment 0
.endif
    IDT_SET VECTOR, tick
.if BITS != 16
    IDT_SET SPURIOUS, spurious
.endif
    IDT_LOAD
.if BITS == 16
    mov al, 0x11                        ; ICW1: edge triggered, cascaded, ICW4 follows
    out 0x20, al
    out 0xA0, al
    mov al, VECTOR                      ; ICW2: IRQ0-7 at VECTOR..VECTOR+7
    out 0x21, al
    mov al, VECTOR + 8                  ; IRQ8-15 after them
    out 0xA1, al
    mov al, 0x04                        ; ICW3: the slave hangs on IRQ2
    out 0x21, al
    mov al, 0x02                        ; ICW3 of the slave: its cascade identity
    out 0xA1, al
    mov al, 0x01                        ; ICW4: 8086 mode, normal EOI
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE                        ; OCW1: IRQ0 (the PIT) unmasked, the rest masked
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    mov al, 0x34                        ; PIT: channel 0, low byte then high byte, mode 2, binary
    out 0x43, al
    mov ax, PIT_COUNT
    out 0x40, al
    mov al, ah
    out 0x40, al                        ; the count is complete: the PIT runs
.else
    mov al, 0xFF                        ; mask both PICs: their ExtINT would reach vCPU 0 too
    out 0x21, al
    out 0xA1, al
    mov esi, LAPIC
    mov dword ptr [esi + 0x350], 0x10000        ; LVT LINT0 masked: no PIC interrupt gets in
    mov dword ptr [esi + 0x80], 0               ; task priority 0: every vector gets through
    ; SVR: bit 8 software-enables the LAPIC. The symbol comes first: keystone reads an
    ; immediate "0x100 + SYMBOL" as a memory operand (mov eax, 0x100 + S is mov eax, [S]).
    mov dword ptr [esi + 0xF0], SPURIOUS + 0x100
    mov dword ptr [esi + 0x3E0], LAPIC_DIVIDE   ; divide configuration
    mov dword ptr [esi + 0x320], VECTOR + 0x20000 ; LVT timer: periodic (bit 17), at VECTOR
    mov dword ptr [esi + 0x380], LAPIC_COUNT    ; initial count: the timer starts
.endif
    sti
wait_tick:
    hlt                                 ; with the irqchip the vCPU sleeps inside KVM_RUN
    cmp dword ptr [RESULTS], TICKS
    jb wait_tick
    cli
.if BITS == 16
    mov al, 0xFF                        ; mask IRQ0: no more ticks
    out 0x21, al
.else
    mov dword ptr [esi + 0x380], 0      ; initial count 0 stops the LAPIC timer
.endif
    mov ebx, stamps
    mov eax, dword ptr [ebx + LAST]
    mov edx, dword ptr [ebx + LAST + 4]
    sub eax, dword ptr [ebx]
    sbb edx, dword ptr [ebx + 4]
    mov dword ptr [RESULTS + 4], eax
    mov dword ptr [RESULTS + 8], edx
    mov dword ptr [RESULTS + 12], ebx
    xor eax, eax
    out DEBUG_EXIT, eax                 ; the one exit: every vCPU stops, wait() returns 0
others:
    cli
    hlt
    jmp others

tick:                                   ; one tick: stamp it, count it, EOI
    SAVE_SCRATCH
    rdtsc
    mov ecx, dword ptr [RESULTS]
    cmp ecx, TICKS
    jae ticked                          ; a tick after the last one counted: only EOI it
    mov dword ptr [stamps + ecx * 8], eax
    mov dword ptr [stamps + ecx * 8 + 4], edx
    inc ecx
    mov dword ptr [RESULTS], ecx
ticked:
.if BITS == 16
    mov al, 0x20                        ; OCW2: non-specific EOI to the master PIC
    out 0x20, al
.else
    mov eax, LAPIC
    mov dword ptr [eax + 0xB0], 0       ; EOI: the LAPIC may deliver the next tick
.endif
    RESTORE_SCRATCH
    INTERRUPT_RETURN

.if BITS != 16
spurious:                               ; the LAPIC's spurious vector: no EOI
    INTERRUPT_RETURN
.endif

IDT_LIBRARY

    .align 8
stamps:
    .space TICKS * 8
