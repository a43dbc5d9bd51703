; triple_fault.asm: how a CPU dies.
;
; What it shows: the fault that ends a machine. The program loads an empty interrupt table
; (limit 0) and executes UD2, an instruction defined to be invalid. The CPU tries to deliver
; #UD through the table, cannot (the table is empty), tries #GP, then #DF, and gives up: a
; triple fault, which on a PC resets the machine.
;
; Hardware KVM reports it as KVM_EXIT_SHUTDOWN (kvmlab: the machine stops, code 0, reason
; SHUTDOWN, as Firecracker treats it). Under a nested, paravirtualized KVM (kvm_pvm) the kernel
; emulates the failing delivery and reports KVM_EXIT_INTERNAL_ERROR suberror 1 instead
; (kvmlab: the vCPU fails, code 1). Either way the machine ends and says why.
;
; On entry: DI = this vCPU's index. Results: none.

start:
    mov eax, empty_idt
    lidt [eax]
    ud2
    hlt                                 ; never reached

empty_idt:
    .word 0                             ; limit 0: no vectors at all
    .quad 0                             ; base (10 bytes in long mode, 6 elsewhere)
