/*
 * kvmlab: the emulated engine's block hook, in C so that it needs no GIL.
 *
 * Unicorn calls kvmlab_on_block at the start of every translation block of a vCPU, on the
 * vCPU's own thread. It stops emulation there (between two instructions, where nothing is
 * in flight, so no instruction runs twice; see engines/emulated.py) in three cases:
 *
 *   - a kick is pending (the vCPU's kvm_run.immediate_exit byte is set): kicked = 1;
 *   - the engine waits for an interrupt window (watch_if) and RFLAGS & if_mask (IF = 1):
 *     watched = 1. IF changes only at STI, POPF and IRET, each of which ends a block, so the
 *     first block start with IF = 1 is the first instruction that may take an interrupt
 *     (the engine itself steps over an STI or MOV SS shadow);
 *   - the engine asked to stop at the next block (stop_next: a vector was raised during an
 *     exit, or the one instruction in an interrupt shadow has run): watched = 1.
 *
 * With skip set, the engine's own stops pass over the first block start (the instruction in
 * an STI shadow, which runs before an interrupt may come): a kick still stops there.
 *
 * The kick's flag is a controller's and is only read here; the engine's own stops have
 * their own flags, so a kick is never taken for one of them, nor lost to one.
 * It also records where the block starts (block), which tells an INT n from a fault.
 *
 * Written in Python, this check costs a GIL round trip per block (about 1 us), and a vCPU
 * spinning in RAM then competes for the GIL with every other vCPU; in C a spinning vCPU
 * runs without the GIL, as a KVM vCPU runs without it inside KVM_RUN.
 */
#include <stdint.h>

struct kvmlab_kick {
    volatile uint8_t *pending;   /* this vCPU's kvm_run.immediate_exit */
    int (*stop)(void *uc);       /* Unicorn's uc_emu_stop */
    volatile uint8_t kicked;     /* set when this hook stopped the run for a kick */
    volatile uint8_t watch_if;   /* stop at a block start where RFLAGS & if_mask */
    volatile uint8_t stop_next;  /* stop at the next block start */
    volatile uint8_t watched;    /* set when this hook stopped the run for watch_if or stop_next */
    volatile uint8_t skip;       /* watch_if and stop_next pass over the next block start */
    int (*reg_read)(void *uc, int regid, void *value);  /* Unicorn's uc_reg_read */
    int flags_reg;               /* UC_X86_REG_EFLAGS */
    uint64_t if_mask;            /* RFLAGS.IF */
    uint64_t block;              /* the address of the block starting now */
};

void kvmlab_on_block(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct kvmlab_kick *kick = user_data;
    uint64_t flags = 0;
    (void)size;
    kick->block = address;
    if (*kick->pending) {
        kick->kicked = 1;
        kick->stop(uc);
    } else if (kick->skip) {
        kick->skip = 0;
    } else if (kick->stop_next
               || (kick->watch_if && kick->reg_read(uc, kick->flags_reg, &flags) == 0 && (flags & kick->if_mask))) {
        kick->watched = 1;
        kick->stop(uc);
    }
}
