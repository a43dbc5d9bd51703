# smp.s: a Multiboot v1 test kernel for kvmlab (GNU as, Intel syntax, 32-bit).
#
# The bootstrap processor initialises the 16550 UART the way a driver does (divisor latch,
# line control, FIFO, modem control, scratch check), prints what the loader told it (command
# line, lower and upper memory, the memory map, the first module), reads fw_cfg (signature,
# number of CPUs, RAM size, command line), starts every application processor with
# INIT/SIPI/SIPI through its local APIC, waits until each has announced itself ("AP <apic id>
# up", one line each under a spin lock), and ends the machine through the debug-exit port
# with the code the command line asks for ("exit=<n>", 0 without it).

.intel_syntax noprefix
.set MB_MAGIC, 0x1BADB002
.set MB_FLAGS, 0x00000003            # page-aligned modules, memory information
.set COM1, 0x3f8
.set FW_CFG_SELECT, 0x510
.set FW_CFG_DATA, 0x511
.set DEBUG_EXIT, 0xf4
.set LAPIC, 0xFEE00000
.set TRAMPOLINE, 0x8000

.section .multiboot, "a"
.align 4
.long MB_MAGIC
.long MB_FLAGS
.long -(MB_MAGIC + MB_FLAGS)

.section .text, "ax"
.code32
.global _start
_start:
    cli
    mov esp, offset stack_top
    mov [boot_magic], eax
    mov [mbi], ebx
    call serial_init
    mov eax, 0xBAD
    cmp dword ptr [boot_magic], 0x2BADB002
    jne exit
    lea esi, msg_hello
    call puts

    mov ebx, [mbi]
    lea esi, msg_cmdline               # MBI +16: command line (flag bit 2)
    call puts
    mov esi, [ebx + 16]
    call puts
    call newline

    lea esi, msg_memory                # MBI +8: KiB of memory above 1 MiB
    call puts
    mov eax, [ebx + 8]
    shr eax, 10
    call put_dec
    lea esi, msg_mib
    call puts

    lea esi, msg_lower                 # MBI +4: KiB of memory below 640 KiB
    call puts
    mov eax, [ebx + 4]
    call put_dec
    lea esi, msg_kib
    call puts

    mov edi, [ebx + 48]                # MBI +44: memory map length, +48: its address
    mov ecx, [ebx + 44]
    add ecx, edi
mmap_loop:
    cmp edi, ecx
    jae mmap_done
    lea esi, msg_mmap                  # entry: size, base (u64), length (u64), type
    call puts
    mov eax, [edi + 4]                 # low halves: kvmlab's RAM is below 4 GiB
    call put_hex
    mov al, ' '
    call putc
    mov eax, [edi + 12]
    call put_hex
    mov al, ' '
    call putc
    mov eax, [edi + 20]
    call put_dec
    call newline
    add edi, [edi]
    add edi, 4
    jmp mmap_loop
mmap_done:

    mov ecx, [ebx + 20]                # MBI +20: module count, +24: module table
    test ecx, ecx
    jz no_module
    mov edx, [ebx + 24]
    lea esi, msg_module
    call puts
    mov eax, [edx + 4]
    sub eax, [edx]
    call put_dec
    lea esi, msg_bytes
    call puts
    mov esi, [edx]
    call puts_line
    call newline
no_module:

    mov ax, 0                          # fw_cfg SIGNATURE
    call fw_select
    lea esi, msg_fwcfg
    call puts
    mov ecx, 4
sig_loop:
    call fw_byte
    call putc
    loop sig_loop
    call newline

    mov ax, 5                          # fw_cfg NB_CPUS (u16)
    call fw_select
    call fw_u16
    mov [ncpus], eax
    lea esi, msg_cpus
    call puts
    call put_dec
    call newline

    mov ax, 3                          # fw_cfg RAM_SIZE (u64): print MiB
    call fw_select
    call fw_u32
    mov ebx, eax
    call fw_u32
    shl eax, 12
    shr ebx, 20
    or eax, ebx
    lea esi, msg_ram
    call puts
    call put_dec
    lea esi, msg_mib
    call puts

    mov ax, 0x15                       # fw_cfg CMDLINE_DATA
    call fw_select
    lea esi, msg_fwcmd
    call puts
fwcmd_loop:
    call fw_byte
    test al, al
    jz fwcmd_done
    call putc
    jmp fwcmd_loop
fwcmd_done:
    call newline

    cmp dword ptr [ncpus], 1
    je all_up
    mov dword ptr [LAPIC + 0x310], 0
    mov dword ptr [LAPIC + 0x300], 0x000C4500            # INIT to all but self
    call delay
    mov dword ptr [LAPIC + 0x300], 0x000C4600 | (TRAMPOLINE >> 12)   # SIPI
    call delay
    mov dword ptr [LAPIC + 0x300], 0x000C4600 | (TRAMPOLINE >> 12)   # SIPI again, as the MP spec says
wait_aps:
    pause
    mov eax, [aps_up]
    inc eax
    cmp eax, [ncpus]
    jne wait_aps
all_up:
    lea esi, msg_all
    call puts
    mov eax, [ncpus]
    call put_dec
    lea esi, msg_up
    call puts
    call parse_exit
exit:
    mov dx, DEBUG_EXIT
    out dx, eax
halt_forever:
    cli
    hlt
    jmp halt_forever

# --- application processors, after the trampoline --------------------------------------------
ap_main32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ebx, [LAPIC + 0x20]            # LAPIC ID register: the APIC ID in bits 31:24
    shr ebx, 24
    mov ecx, ebx
    inc ecx
    shl ecx, 12
    lea esp, [ap_stacks + ecx]
    call lock_acquire
    lea esi, msg_ap
    call puts
    mov eax, ebx
    call put_dec
    lea esi, msg_up
    call puts
    call lock_release
    lock inc dword ptr [aps_up]
ap_halt:
    cli
    hlt
    jmp ap_halt

# --- helpers ------------------------------------------------------------------------------------
serial_init:
    mov dx, COM1 + 1
    xor al, al
    out dx, al                          # IER: no interrupts
    mov dx, COM1 + 3
    mov al, 0x80
    out dx, al                          # LCR: DLAB on
    mov dx, COM1
    mov al, 1
    out dx, al                          # DLL: 115200 baud
    mov dx, COM1 + 1
    xor al, al
    out dx, al                          # DLM
    mov dx, COM1 + 3
    mov al, 0x03
    out dx, al                          # LCR: 8N1, DLAB off
    mov dx, COM1 + 2
    mov al, 0xC7
    out dx, al                          # FCR: FIFOs on, cleared
    mov dx, COM1 + 4
    mov al, 0x0B
    out dx, al                          # MCR: DTR, RTS, OUT2
    mov dx, COM1 + 7
    mov al, 0x5A
    out dx, al                          # scratch register round trip
    in al, dx
    cmp al, 0x5A
    je serial_ok
    mov eax, 0xE1
    jmp exit
serial_ok:
    ret

.include "console.s"

puts_line:                              # esi: up to NUL or newline
    push eax
    push esi
line_loop:
    lodsb
    test al, al
    jz line_done
    cmp al, 10
    je line_done
    call putc
    jmp line_loop
line_done:
    pop esi
    pop eax
    ret

newline:
    push eax
    mov al, 10
    call putc
    pop eax
    ret

put_dec:                                # eax, unsigned
    push eax
    push ecx
    push edx
    push edi
    lea edi, [dec_buffer + 11]
    mov byte ptr [edi], 0
    mov ecx, 10
dec_loop:
    xor edx, edx
    div ecx
    add dl, '0'
    dec edi
    mov [edi], dl
    test eax, eax
    jnz dec_loop
    mov esi, edi
    call puts
    pop edi
    pop edx
    pop ecx
    pop eax
    ret

fw_select:                              # ax: key
    push edx
    mov dx, FW_CFG_SELECT
    out dx, ax
    pop edx
    ret

fw_byte:                                # al <- next byte
    push edx
    mov dx, FW_CFG_DATA
    in al, dx
    pop edx
    ret

fw_u16:                                 # eax <- next u16 (little-endian)
    push ebx
    xor eax, eax
    call fw_byte
    mov bl, al
    call fw_byte
    mov ah, al
    mov al, bl
    pop ebx
    ret

fw_u32:                                 # eax <- next u32 (little-endian)
    push ebx
    call fw_u16
    mov ebx, eax
    call fw_u16
    shl eax, 16
    or eax, ebx
    pop ebx
    ret

parse_exit:                             # eax <- n from "exit=n" in the command line, else 0
    push esi
    push ebx
    mov ebx, [mbi]
    mov esi, [ebx + 16]
scan:
    mov al, [esi]
    test al, al
    jz no_exit
    cmp dword ptr [esi], 0x74697865     # "exit"
    jne next_char
    cmp byte ptr [esi + 4], '='
    je found_exit
next_char:
    inc esi
    jmp scan
found_exit:
    add esi, 5
    xor eax, eax
digits:
    movzx ebx, byte ptr [esi]
    sub ebx, '0'
    cmp ebx, 9
    ja parsed
    imul eax, eax, 10
    add eax, ebx
    inc esi
    jmp digits
no_exit:
    xor eax, eax
parsed:
    pop ebx
    pop esi
    ret

lock_acquire:
    push eax
lock_spin:
    mov eax, 1
    xchg eax, [print_lock]
    test eax, eax
    jz lock_taken
    pause
    jmp lock_spin
lock_taken:
    pop eax
    ret

lock_release:
    mov dword ptr [print_lock], 0
    ret

delay:
    push ecx
    mov ecx, 20000
delay_loop:
    loop delay_loop
    pop ecx
    ret

# --- the AP trampoline, at 0x8000: real mode to protected mode --------------------------------
.section .trampoline, "ax"
.code16
ap_start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [ap_gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xEA                    # jmp far 0x08:ap_main32 (32-bit offset)
    .long ap_main32
    .word 0x08
.align 8
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
ap_gdt_descriptor:
    .word 23
    .long ap_gdt

.section .rodata
msg_hello:   .asciz "kernel: hello from a multiboot kernel\n"
msg_cmdline: .asciz "cmdline: "
msg_memory:  .asciz "upper memory: "
msg_mib:     .asciz " MiB\n"
msg_lower:   .asciz "lower memory: "
msg_kib:     .asciz " KiB\n"
msg_mmap:    .asciz "mmap: "
msg_module:  .asciz "module: "
msg_bytes:   .asciz " bytes: "
msg_fwcfg:   .asciz "fw_cfg signature: "
msg_cpus:    .asciz "fw_cfg cpus: "
msg_ram:     .asciz "fw_cfg ram: "
msg_fwcmd:   .asciz "fw_cfg cmdline: "
msg_ap:      .asciz "AP "
msg_all:     .asciz "all "
msg_up:      .asciz " up\n"

.section .data
.align 4
boot_magic: .long 0
mbi:        .long 0
ncpus:      .long 1
aps_up:     .long 0
print_lock: .long 0

.section .bss
.align 16
dec_buffer: .skip 16
stack:      .skip 16384
stack_top:
ap_stacks:  .skip 4096 * 64
