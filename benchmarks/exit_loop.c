/*
 * exit_loop.c: the C reference for kvmlab's exit-throughput benchmark.
 *
 * The smallest VMM that can run kvmlab's guest: one VM, RAM at [0, 0xa0000) with the guest
 * image at 0x8000, N vCPUs started in real mode with DI = index, each in its own thread doing
 * KVM_RUN in a tight loop. MMIO writes are stored in a 4 KiB register file and MMIO reads
 * answered from it (what kvmlab's mailbox device does); port writes are stored per port and
 * port reads answered from there (what the UART's scratch register does); HLT ends a vCPU. It
 * prints, per vCPU and in total, the exits handled and the seconds between the first KVM_RUN
 * and the last HLT, then each vCPU's 16-byte results area (four dwords at 0x500 + 16 * index,
 * where kvmlab's bundled programs leave what they measured).
 *
 *   usage: exit_loop GUEST.bin VCPUS
 *   output: "exits <total> seconds <wall> per_vcpu <e0> <e1> ..."
 *           "results <vcpu> <dword0> <dword1> <dword2> <dword3>"   (one line per vCPU)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE 0xa0000
#define LOAD_ADDRESS 0x8000
#define DEVICE_BASE 0xa0000
#define DEVICE_SIZE 0x1000
#define STACK_SIZE 0x1000
#define RESULTS_ADDRESS 0x500
#define RESULTS_STRIDE 16

static uint8_t registers[DEVICE_SIZE];
static uint8_t ports[0x10000];
static int vm_fd, run_size;

struct vcpu {
    int index, fd;
    struct kvm_run *run;
    unsigned long exits;
    pthread_t thread;
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void setup_real_mode(struct vcpu *v) {
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs};
    for (int i = 0; i < 5; i++) {
        segs[i]->base = 0;
        segs[i]->selector = 0;
        segs[i]->limit = 0xffff;
    }
    unsigned stack_segment = (RAM_SIZE - v->index * STACK_SIZE - STACK_SIZE) >> 4;
    sregs.ss.base = stack_segment << 4;
    sregs.ss.selector = stack_segment;
    sregs.ss.limit = 0xffff;
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    memset(&regs, 0, sizeof regs);
    regs.rip = LOAD_ADDRESS;
    regs.rflags = 2;
    regs.rsp = STACK_SIZE;
    regs.rdi = v->index;
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static void *vcpu_thread(void *arg) {
    struct vcpu *v = arg;
    struct kvm_run *run = v->run;
    for (;;) {
        if (ioctl(v->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_MMIO: {
            uint64_t offset = run->mmio.phys_addr - DEVICE_BASE;
            if (offset + run->mmio.len <= DEVICE_SIZE) {
                if (run->mmio.is_write)
                    memcpy(registers + offset, run->mmio.data, run->mmio.len);
                else
                    memcpy(run->mmio.data, registers + offset, run->mmio.len);
            }
            v->exits++;
            break;
        }
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
                if (run->io.port + run->io.size > sizeof ports) break;
                if (run->io.direction == KVM_EXIT_IO_OUT)
                    memcpy(ports + run->io.port, data, run->io.size);
                else
                    memcpy(data, ports + run->io.port, run->io.size);
            }
            v->exits++;
            break;
        }
        case KVM_EXIT_HLT:
            v->exits++;
            return NULL;
        default:
            fprintf(stderr, "vcpu %d: unexpected exit %u\n", v->index, run->exit_reason);
            exit(1);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s GUEST.bin VCPUS\n", argv[0]);
        return 2;
    }
    int vcpus = atoi(argv[2]);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    vm_fd = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm_fd < 0) die("KVM_CREATE_VM");
    if (ioctl(vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) die("KVM_SET_TSS_ADDR");
    uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED) die("mmap");
    FILE *guest = fopen(argv[1], "rb");
    if (!guest) die(argv[1]);
    fread(ram + LOAD_ADDRESS, 1, RAM_SIZE - LOAD_ADDRESS, guest);
    fclose(guest);
    struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE, .userspace_addr = (uint64_t)ram};
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);

    struct vcpu *all = calloc(vcpus, sizeof *all);
    for (int i = 0; i < vcpus; i++) {
        all[i].index = i;
        all[i].fd = ioctl(vm_fd, KVM_CREATE_VCPU, i);
        if (all[i].fd < 0) die("KVM_CREATE_VCPU");
        all[i].run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, all[i].fd, 0);
        if (all[i].run == MAP_FAILED) die("mmap kvm_run");
        setup_real_mode(&all[i]);
    }
    double start = now();
    for (int i = 0; i < vcpus; i++) pthread_create(&all[i].thread, NULL, vcpu_thread, &all[i]);
    unsigned long total = 0;
    for (int i = 0; i < vcpus; i++) {
        pthread_join(all[i].thread, NULL);
        total += all[i].exits;
    }
    double seconds = now() - start;
    printf("exits %lu seconds %.6f per_vcpu", total, seconds);
    for (int i = 0; i < vcpus; i++) printf(" %lu", all[i].exits);
    printf("\n");
    for (int i = 0; i < vcpus; i++) {
        uint32_t *results = (uint32_t *)(ram + RESULTS_ADDRESS + i * RESULTS_STRIDE);
        printf("results %d %u %u %u %u\n", i, results[0], results[1], results[2], results[3]);
    }
    return 0;
}
