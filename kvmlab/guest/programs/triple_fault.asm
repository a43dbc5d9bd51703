; triple_fault.asm: how a CPU dies.
;
; What it shows: the fault that ends a machine. The program loads an empty interrupt table
; (limit 0, placed at NO_MEMORY, a guest address where there is neither RAM nor a device) and
; executes UD2, an instruction defined to be invalid. The CPU tries to deliver #UD through the
; table and cannot; it tries #GP, then #DF, and gives up: a triple fault, which on a PC resets
; the machine. KVM reports it as KVM_EXIT_SHUTDOWN; kvmlab stops the machine with exit code 3
; (ExitCode.TRIPLE_FAULT, reason "SHUTDOWN (triple fault)"): a crash. (Firecracker reports 0,
; since its Linux guests reboot by triple-faulting; these programs never do.)
;
; Why the table is put where no memory is: a CPU with VT-x checks the limit and faults at once,
; but KVM's own instruction emulator (used for real mode on some hosts, and for everything under
; a nested, paravirtualized KVM such as kvm_pvm) skips the limit check in real mode and reads
; the vector from the table's base. With the base at 0 it would find vector 6 in the real-mode
; interrupt table of zeros and jump to 0000:0000. With no memory at the base, both fail.
;
; On entry: DI = this vCPU's index. Results: none.

.equ NO_MEMORY, 0xbf000

start:
    mov eax, empty_idt
    lidt [eax]
    ud2
    hlt                                 ; never reached

empty_idt:
    .word 0                             ; limit 0: no vectors at all
    .quad NO_MEMORY                     ; base (10 bytes in long mode, 6 elsewhere)
