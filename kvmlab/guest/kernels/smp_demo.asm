; smp_demo.asm: a Multiboot kernel that starts its application processors one at a time.
;
; What it shows: how a multi-processor guest boots. Only the bootstrap processor (BSP, vCPU 0)
; runs at first; every other vCPU waits for INIT in KVM (MP state UNINITIALIZED). The BSP
; reads the number of CPUs from fw_cfg and, for each AP in turn, sends INIT and then a Startup
; IPI through its local APIC's interrupt command register (ICR, LAPIC + 0x300/0x310). KVM's
; in-kernel LAPIC delivers them: the INIT makes that AP INIT_RECEIVED (waiting for SIPI), the SIPI
; right after it makes it RUNNABLE, in real mode at the trampoline page, which takes it to this
; file's entry in 32-bit protected mode. (Sent back to back, KVM usually takes both at once.)
;
; Before waking each AP the BSP works (STEP_EXITS MMIO writes to its mailbox counter), so a
; watcher sees the APs come up one by one. Each AP announces itself over serial (under a
; spin lock: the UART is shared), does WORK MMIO writes to COUNTER<apic id>, and halts. When all
; are done the BSP prints the total and writes 0 to the debug-exit port: the machine ends.
;
; The ICR, the LAPIC ID register and the HLTs never leave KVM (the irqchip is in the kernel);
; the serial port, fw_cfg and mailbox accesses are the exits you see.
;
; One entry for everyone: the BSP arrives from the loader with EAX = 0x2BADB002, an AP from
; the trampoline with EAX = 0.

    .long 0x1BADB002                    ; multiboot header: magic, flags, checksum
    .long 0x00000002                    ; flags: memory information
    .long -(0x1BADB002 + 0x00000002)

entry:
    cli
    cmp eax, 0x2BADB002
    jne ap_main
    mov esp, BSP_STACK
    mov esi, msg_hello
    call puts

    mov ax, 5                           ; fw_cfg NB_CPUS: how many APs to start
    mov dx, FW_CFG_SELECT
    out dx, ax
    mov dx, FW_CFG_DATA
    xor eax, eax
    in al, dx
    mov dword ptr [NCPUS], eax
    call put_dec
    mov esi, msg_cpus
    call puts

    mov ebx, 1                          ; the next APIC ID to start
start_next:
    cmp ebx, dword ptr [NCPUS]
    jae all_started
    mov ecx, STEP_EXITS                 ; work before starting it: MMIO exits on vCPU 0
step:
    mov dword ptr [MAILBOX + MB_COUNTERS], ecx
    loop step
    mov esi, msg_sipi
    call puts
    mov eax, ebx
    call put_dec
    call newline
    mov eax, ebx
    shl eax, 24
    mov dword ptr [LAPIC + 0x310], eax  ; ICR high: the destination APIC ID
    mov dword ptr [LAPIC + 0x300], 0x00004500   ; INIT, assert
    mov dword ptr [LAPIC + 0x310], eax
    mov dword ptr [LAPIC + 0x300], SIPI     ; Startup IPI: 0x4600 | the trampoline's page
wait_up:
    pause
    cmp dword ptr [STARTED], ebx        ; the AP counts itself in
    jb wait_up
    inc ebx
    jmp start_next

all_started:
    mov eax, dword ptr [NCPUS]
    dec eax
wait_done:
    pause
    cmp dword ptr [DONE], eax
    jb wait_done
    mov esi, msg_all
    call puts
    mov eax, dword ptr [NCPUS]
    call put_dec
    mov esi, msg_done
    call puts
    xor eax, eax
    mov dx, DEBUG_EXIT
    out dx, eax                         ; code 0: the machine ends here
halt:
    hlt
    jmp halt

ap_main:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ebx, dword ptr [LAPIC + 0x20]   ; LAPIC ID register: the APIC ID in bits 31:24
    shr ebx, 24
    mov esp, ebx
    inc esp
    shl esp, 12
    add esp, AP_STACKS                  ; 4 KiB of stack per APIC ID
    call lock_acquire
    mov esi, msg_ap
    call puts
    mov eax, ebx
    call put_dec
    mov esi, msg_up
    call puts
    call lock_release
    lock inc dword ptr [STARTED]
    mov ecx, WORK
    lea edi, [ebx * 4 + MAILBOX + MB_COUNTERS]
work:
    mov dword ptr [edi], ecx            ; MMIO write exit on this AP
    loop work
    lock inc dword ptr [DONE]
ap_halt:
    hlt                                 ; interrupts are off: halted for good (MP state HALTED)
    jmp ap_halt

; --- helpers -----------------------------------------------------------------------------------
putc:                                   ; al, once the UART can take it
    push edx
    push eax
    mov dx, SERIAL + 5
putc_wait:
    in al, dx                           ; LSR: exit (port I/O in)
    test al, 0x20                       ; THRE
    jz putc_wait
    pop eax
    mov dx, SERIAL
    out dx, al                          ; THR: exit (port I/O out)
    pop edx
    ret

puts:                                   ; esi: NUL-terminated
    push eax
    push esi
puts_loop:
    lodsb
    test al, al
    jz puts_done
    call putc
    jmp puts_loop
puts_done:
    pop esi
    pop eax
    ret

newline:
    push eax
    mov al, 10
    call putc
    pop eax
    ret

put_dec:                                ; eax < 1000
    push eax
    push ecx
    push edx
    xor ecx, ecx
dec_split:
    xor edx, edx
    push ebx
    mov ebx, 10
    div ebx
    pop ebx
    push edx
    inc ecx
    test eax, eax
    jnz dec_split
dec_print:
    pop eax
    add al, 0x30
    call putc
    loop dec_print
    pop edx
    pop ecx
    pop eax
    ret

lock_acquire:
    push eax
lock_spin:
    mov eax, 1
    xchg eax, dword ptr [PRINT_LOCK]
    test eax, eax
    jz lock_taken
    pause
    jmp lock_spin
lock_taken:
    pop eax
    ret

lock_release:
    mov dword ptr [PRINT_LOCK], 0
    ret

msg_hello: .asciz "smp demo: bootstrap processor up, "
msg_cpus:  .asciz " CPUs (fw_cfg)\n"
msg_sipi:  .asciz "BSP: INIT + SIPI to APIC "
msg_ap:    .asciz "AP "
msg_up:    .asciz " up\n"
msg_all:   .asciz "all "
msg_done:  .asciz " CPUs done\n"
