# kludge.s: a Multiboot kernel that is not ELF: a flat binary whose header gives the load
# addresses itself (flag 16, the "a.out kludge"). Link with --oformat binary at 0x100000.
# It checks the boot magic and that its bss was zeroed, says so over serial, and exits with
# code 7 (0xBAD on a wrong magic, 0xB55 on a dirty bss).
.intel_syntax noprefix
.set MB_MAGIC, 0x1BADB002
.set MB_FLAGS, 0x00010002            # load addresses in the header, memory information
.set COM1, 0x3f8
.set BSS_SIZE, 0x2000

.text
.code32
header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long header                        # header_addr
    .long header                        # load_addr: the file starts with this header
    .long load_end                      # load_end_addr
    .long load_end + BSS_SIZE           # bss_end_addr
    .long entry                         # entry_addr

.global entry
entry:
    mov ebx, 0xBAD
    cmp eax, 0x2BADB002
    jne done
    mov ebx, 0xB55
    mov edi, offset load_end
    mov ecx, BSS_SIZE / 4
check_bss:
    cmp dword ptr [edi], 0
    jne done
    add edi, 4
    loop check_bss
    lea esi, message
    mov dx, COM1
print:
    lodsb
    test al, al
    jz printed
    out dx, al
    jmp print
printed:
    mov ebx, 7
done:
    mov eax, ebx
    mov dx, 0xf4
    out dx, eax
halt:
    hlt
    jmp halt

message: .asciz "kludge: loaded from a flat binary, bss zeroed\n"
.align 4
load_end:
