// The emulator's block scheduler: runs one kernel launch on the CPU, one
// block at a time, one fiber per CUDA thread (see cuda_on_cpu.hpp for the
// rules), and turns what a GPU would fault on into a status the driver
// API returns:
//  - a memory access outside every allocation (the Rust side puts a
//    PROT_NONE page right after each one) is caught by a SIGSEGV/SIGBUS
//    handler that leaves the kernel with siglongjmp;
//  - a warp intrinsic whose mask leaves out a calling lane, names an
//    exited lane or differs between lanes, and a block whose threads wait
//    for each other forever, end the launch with a message.
// Launches are serialised by the caller (one block in the process at a
// time), which is what lets shared memory be one static section.
//
// It must not know about the driver API, allocations or PTX: the Rust
// crate owns those and calls kbemu_run.

#include "cuda_on_cpu.hpp"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// Bounds of the static shared memory of every kernel (see __shared__).
// The anchor makes sure the section exists.
static char kbemu_shared_anchor[16] __attribute__((section("kbemu_shared"), used, aligned(16)));
extern "C" char __start_kbemu_shared[];
extern "C" char __stop_kbemu_shared[];

namespace kbemu {

dim3 g_block_idx, g_block_dim, g_grid_dim;

namespace {

enum State { Runnable, AtBarrier, AtWarp, Done };

const unsigned MAX_THREADS = 1024;
// Kernels are shallow; small stacks keep all of a block's in the TLB.
const size_t STACK_BYTES = 16 * 1024;

struct Fiber {
#if defined(__x86_64__)
    void* sp;
#else
    ucontext_t ctx;
#endif
    char* stack;
    dim3 tid;
    State state;
    WarpOp op;
    unsigned mask;
    int arg, width;
    unsigned bytes;
    unsigned char value[8], result[8];
};

Fiber g_fibers[MAX_THREADS];
Fiber* g_cur;
// Per block: threads finished, threads at __syncthreads, and lanes waiting
// at a warp intrinsic per warp (kept as the fibers move, so a round costs
// one pass over the threads).
unsigned g_done, g_at_barrier, g_at_warp[MAX_THREADS / 32];
const KernelInfo* g_kernel;
void** g_params;
char* g_stacks;
size_t g_page;

#if defined(__x86_64__)
void* g_sched_sp;
#else
ucontext_t g_sched_ctx;
#endif

// Fault recovery: the launching thread's return point, and where a fault
// hit.
sigjmp_buf g_fault_jmp;
volatile sig_atomic_t g_in_kernel;
pthread_t g_kernel_thread;
void* volatile g_fault_addr;
struct sigaction g_old_segv, g_old_bus;
char g_alt_stack[64 * 1024];

}  // namespace
}  // namespace kbemu

#if defined(__x86_64__)
// kbemu_switch(save, to): saves the callee-saved registers on the current
// stack, stores its pointer in *save, and resumes the stack `to`.
extern "C" void kbemu_switch(void** save, void* to);
asm(R"(
    .text
    .globl kbemu_switch
    .hidden kbemu_switch
    .type kbemu_switch, @function
kbemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kbemu_switch, .-kbemu_switch
)");
#endif

namespace kbemu {
namespace {

// The round in progress: the order the fibers run in, and the position of
// the one running. A fiber that yields hands over straight to the next
// runnable fiber of the round (one switch, not two), and to the scheduler
// when the round is over.
unsigned* g_order;
unsigned g_pos, g_threads;

Fiber* next_in_round() {
    while (++g_pos < g_threads) {
        Fiber* f = &g_fibers[g_order[g_pos]];
        if (f->state == Runnable) return f;
    }
    return nullptr;
}

void yield() {
    Fiber* self = g_cur;
    Fiber* next = next_in_round();
#if defined(__x86_64__)
    if (next) {
        g_cur = next;
        kbemu_switch(&self->sp, next->sp);
    } else {
        kbemu_switch(&self->sp, g_sched_sp);
    }
#else
    if (next) {
        g_cur = next;
        swapcontext(&self->ctx, &next->ctx);
    } else {
        swapcontext(&self->ctx, &g_sched_ctx);
    }
#endif
}

// Runs one round: every runnable fiber, in `order`, until it yields.
void run_round(unsigned* order, unsigned threads) {
    g_order = order;
    g_threads = threads;
    g_pos = (unsigned)-1;
    Fiber* first = next_in_round();
    if (!first) return;
    g_cur = first;
#if defined(__x86_64__)
    kbemu_switch(&g_sched_sp, first->sp);
#else
    swapcontext(&g_sched_ctx, &first->ctx);
#endif
}

void fiber_main() {
    g_kernel->invoke(g_kernel->fn, g_params);
    g_cur->state = Done;
    g_done++;
    yield();
    abort();  // a finished fiber is never resumed
}

void start_fiber(Fiber* f) {
    char* top = f->stack + STACK_BYTES;
#if defined(__x86_64__)
    // The frame kbemu_switch pops: six registers, then fiber_main as the
    // return address, entered with rsp = 8 mod 16 as the ABI requires.
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, &fiber_main, 0);
#endif
    f->state = Runnable;
}

bool ensure_stacks() {
    if (g_stacks) return true;
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    size_t each = STACK_BYTES + g_page;
    void* m = mmap(nullptr, each * MAX_THREADS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return false;
    g_stacks = static_cast<char*>(m);
    for (unsigned i = 0; i < MAX_THREADS; i++) {
        // A guard page below each stack: an overflow faults.
        mprotect(g_stacks + i * each, g_page, PROT_NONE);
        g_fibers[i].stack = g_stacks + i * each + g_page;
    }
    return true;
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
    if (g_in_kernel && pthread_equal(g_kernel_thread, pthread_self())) {
        g_in_kernel = 0;
        g_fault_addr = info->si_addr;
        siglongjmp(g_fault_jmp, 1);
    }
    // Not ours: hand it to whoever had it (Rust's stack-overflow handler,
    // or the default action).
    struct sigaction* old = sig == SIGSEGV ? &g_old_segv : &g_old_bus;
    if (old->sa_flags & SA_SIGINFO) {
        old->sa_sigaction(sig, info, uctx);
    } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
        old->sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // returning re-executes the access: default action
    }
}

pthread_once_t g_handler_once = PTHREAD_ONCE_INIT;
void install_handler() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
}

uint64_t g_rng;
uint64_t next_random() {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

// A uniform number below `n` (multiply-shift: no division).
unsigned below(unsigned n) { return (unsigned)(((next_random() >> 32) * (uint64_t)n) >> 32); }

struct Report {
    char* msg;
    size_t cap;
};

__attribute__((format(printf, 2, 3))) void describe(Report r, const char* fmt, ...) {
    int used = snprintf(r.msg, r.cap, "kernel %s, block (%u,%u,%u): ", g_kernel->name, g_block_idx.x,
                        g_block_idx.y, g_block_idx.z);
    if (used < 0 || (size_t)used >= r.cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.msg + used, r.cap - used, fmt, ap);
    va_end(ap);
}

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpIdx: return "__shfl_sync";
        case WarpUp: return "__shfl_up_sync";
        case WarpDown: return "__shfl_down_sync";
        case WarpXor: return "__shfl_xor_sync";
        case WarpSync: return "__syncwarp";
        case WarpBallot: return "__ballot_sync";
    }
    return "?";
}

// Releases warp `w` if every lane its mask names is waiting at the same
// intrinsic. Returns 1 when it released, 0 when it must wait, -1 on misuse.
int resolve_warp(unsigned w, unsigned threads, Report rep) {
    Fiber* lanes = g_fibers + w * 32;
    unsigned live = threads - w * 32 < 32 ? threads - w * 32 : 32;
    int first = -1;
    for (unsigned l = 0; l < live; l++)
        if (lanes[l].state == AtWarp) {
            first = (int)l;
            break;
        }
    if (first < 0) return 0;
    Fiber& f0 = lanes[first];
    unsigned mask = f0.mask;
    for (unsigned l = 0; l < live; l++) {
        Fiber& f = lanes[l];
        if (f.state != AtWarp) continue;
        if (!(f.mask >> l & 1)) {
            describe(rep, "lane %u of warp %u calls a warp intrinsic with mask 0x%08x, which leaves the lane out", l,
                     w, f.mask);
            return -1;
        }
        if (f.mask != mask || f.op != f0.op || f.bytes != f0.bytes) {
            describe(rep, "lanes %u and %u of warp %u meet at different warp intrinsics or masks (0x%08x)",
                     (unsigned)first, l, w, f.mask);
            return -1;
        }
    }
    for (unsigned l = 0; l < 32; l++) {
        if (!(mask >> l & 1)) continue;
        if (l >= live || lanes[l].state == Done) {
            describe(rep, "warp %u: mask 0x%08x names lane %u, which has exited (or does not exist)", w, mask, l);
            return -1;
        }
        if (lanes[l].state != AtWarp) return 0;  // waits at __syncthreads: the deadlock check reports it
    }
    unsigned ballot = 0;
    if (f0.op == WarpBallot)
        for (unsigned l = 0; l < 32; l++)
            if (mask >> l & 1 && lanes[l].value[0]) ballot |= 1u << l;
    for (unsigned l = 0; l < 32; l++) {
        if (!(mask >> l & 1)) continue;
        Fiber& f = lanes[l];
        // Segments of `width` lanes (32, the whole warp, nearly always:
        // divisions only for narrower ones).
        int width = f.width > 0 && f.width < 32 ? f.width : 32;
        unsigned base = width == 32 ? 0 : l / width * width, pos = l - base;
        int src;
        switch (f.op) {
            case WarpIdx: src = (int)(base + (width == 32 ? (unsigned)f.arg & 31 : (unsigned)f.arg % width)); break;
            case WarpUp: src = pos < (unsigned)f.arg ? (int)l : (int)(l - f.arg); break;
            case WarpDown: src = pos + f.arg >= (unsigned)width ? (int)l : (int)(l + f.arg); break;
            case WarpXor: src = (int)(l ^ (unsigned)f.arg); src = (unsigned)src - base < (unsigned)width ? src : (int)l; break;
            default: src = (int)l;
        }
        if (f.op == WarpBallot) {
            memcpy(f.result, &ballot, sizeof ballot);
        } else if (src >= 0 && src < 32 && (mask >> src & 1)) {
            memcpy(f.result, lanes[src].value, 8);
        } else {
            memset(f.result, 0xff, 8);  // undefined on a GPU: NaN here
        }
        f.state = Runnable;
    }
    g_at_warp[w] = 0;
    return 1;
}

// Runs one block to completion. 0: done; -1: misuse (message written).
int run_block(unsigned threads, unsigned* order, Report rep) {
    size_t shared = (size_t)(__stop_kbemu_shared - __start_kbemu_shared);
    memset(__start_kbemu_shared, 0xff, shared);
    unsigned bx = g_block_dim.x, by = g_block_dim.y;
    for (unsigned i = 0; i < threads; i++) {
        Fiber& f = g_fibers[i];
        f.tid.x = i % bx;
        f.tid.y = i / bx % by;
        f.tid.z = i / (bx * by);
        start_fiber(&f);
        order[i] = i;
    }
    unsigned warps = (threads + 31) / 32;
    g_done = g_at_barrier = 0;
    memset(g_at_warp, 0, sizeof g_at_warp);
    for (;;) {
        // Fisher-Yates: a fresh order for every round.
        for (unsigned i = threads; i > 1; i--) {
            unsigned j = below(i);
            unsigned t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
        run_round(order, threads);
        if (g_done == threads) return 0;
        bool released = false, waiting_warps = false;
        for (unsigned w = 0; w < warps; w++) {
            if (!g_at_warp[w]) continue;
            int r = resolve_warp(w, threads, rep);
            if (r < 0) return -1;
            released |= r > 0;
            waiting_warps |= r == 0;
        }
        if (!released && !waiting_warps && g_at_barrier == threads - g_done) {
            for (unsigned i = 0; i < threads; i++)
                if (g_fibers[i].state == AtBarrier) g_fibers[i].state = Runnable;
            g_at_barrier = 0;
            released = true;
        }
        if (!released) {
            describe(rep,
                     "deadlock: %u threads wait at __syncthreads, %u at warp intrinsics and %u have exited; "
                     "a barrier or warp intrinsic is not reached by every thread it waits for",
                     g_at_barrier, threads - g_done - g_at_barrier, g_done);
            return -1;
        }
    }
}

}  // namespace

const dim3& thread_idx() { return g_cur->tid; }

void syncthreads() {
    g_cur->state = AtBarrier;
    g_at_barrier++;
    yield();
}

void warp_collective(WarpOp kind, unsigned mask, const void* value, unsigned bytes, int arg, int width,
                     void* result) {
    Fiber* f = g_cur;
    f->op = kind;
    f->mask = mask;
    f->arg = arg;
    f->width = width;
    f->bytes = bytes;
    uint64_t v = 0;
    memcpy(&v, value, bytes < 8 ? bytes : 8);  // value holds `bytes` bytes
    memcpy(f->value, &v, 8);
    f->state = AtWarp;
    g_at_warp[(unsigned)(f - g_fibers) / 32]++;
    yield();
    if (result) {
        if (kind == WarpBallot) memcpy(result, f->result, sizeof(unsigned));
        else if (bytes == 4) memcpy(result, f->result, 4);
        else if (bytes == 8) memcpy(result, f->result, 8);
        else memcpy(result, f->result, bytes);
    }
}

}  // namespace kbemu

// Runs `kernel` over the whole grid. Returns 0 when every block finished,
// 1 on a memory fault (its address in *fault_addr, the faulting thread and
// block in where[0..6]), 2 on misuse (message in msg), 3 when the fiber
// stacks could not be mapped. The caller has checked the launch
// configuration (at most 1024 threads) and holds the launch lock.
extern "C" int kbemu_run(const kbemu::KernelInfo* kernel, void** params, const unsigned grid[3],
                         const unsigned block[3], uint64_t seed, char* msg, size_t cap, uintptr_t* fault_addr,
                         unsigned where[6]) {
    using namespace kbemu;
    if (!ensure_stacks()) return 3;
    pthread_once(&g_handler_once, &install_handler);
    static unsigned order[MAX_THREADS];
    unsigned threads = block[0] * block[1] * block[2];
    g_kernel = kernel;
    g_params = params;
    g_grid_dim = {grid[0], grid[1], grid[2]};
    g_block_dim = {block[0], block[1], block[2]};
    g_rng = seed * 0x9e3779b97f4a7c15ull + 1;
    Report rep = {msg, cap};

    stack_t alt, old_alt;
    alt.ss_sp = g_alt_stack;
    alt.ss_size = sizeof g_alt_stack;
    alt.ss_flags = 0;
    sigaltstack(&alt, &old_alt);
    volatile int status = 0;
    g_kernel_thread = pthread_self();
    if (sigsetjmp(g_fault_jmp, 1) == 0) {
        g_in_kernel = 1;
        for (unsigned z = 0; z < grid[2] && status == 0; z++)
            for (unsigned y = 0; y < grid[1] && status == 0; y++)
                for (unsigned x = 0; x < grid[0] && status == 0; x++) {
                    g_block_idx = {x, y, z};
                    if (run_block(threads, order, rep) < 0) status = 2;
                }
        g_in_kernel = 0;
    } else {
        status = 1;
        *fault_addr = (uintptr_t)g_fault_addr;
        where[0] = g_cur->tid.x;
        where[1] = g_cur->tid.y;
        where[2] = g_cur->tid.z;
        where[3] = g_block_idx.x;
        where[4] = g_block_idx.y;
        where[5] = g_block_idx.z;
    }
    sigaltstack(&old_alt, nullptr);
    return status;
}
