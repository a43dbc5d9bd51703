; exit_code.asm: end the whole machine with an exit code, through the debug-exit port.
;
; What it shows: a machine-wide stop requested by the guest. vCPU 0 spins DELAY times, then
; writes CODE to the debug-exit port (DEBUG_EXIT, a 4-byte port like QEMU's isa-debug-exit).
; That one OUT stops every vCPU, whatever it is doing: here the other vCPUs are in a busy loop
; with no exits and are kicked out of KVM_RUN. Machine.wait() returns CODE.
;
; On entry: DI = this vCPU's index.
; Results (16 bytes per vCPU at RESULTS): dword 0 = 1 once vCPU 0 is about to write the code.

start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS
    test edi, edi
    jnz others
    mov ecx, DELAY
delay:
    test ecx, ecx
    jz report
    dec ecx
    jmp delay
report:
    mov dword ptr [ebx], 1
    mov eax, CODE
    out DEBUG_EXIT, eax                 ; exit: KVM_EXIT_IO out, 4 bytes: the machine stops
    hlt                                 ; never reached
others:
    jmp others
