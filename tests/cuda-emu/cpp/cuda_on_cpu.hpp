// CUDA C on the CPU: the few names kernels.cu uses, mapped onto the
// emulator's block scheduler (scheduler.cpp). Included before kernels.cu,
// which itself includes nothing, so the kernels compile unchanged.
//
// Every CUDA thread of a block is a fiber on one OS thread. A fiber runs
// until it reaches __syncthreads() or a warp intrinsic, then yields; the
// scheduler releases a barrier once every live thread of the block has
// reached it, and a warp intrinsic once every lane its mask names has.
// Between releases the fibers run in a shuffled order, so a missing barrier
// shows up as a wrong result instead of passing by luck.
//
// This header owns the CUDA names only; launching, memory and the driver
// API live in the Rust crate (src/).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

namespace kbemu {

struct dim3 {
    unsigned x, y, z;
};

// The calling fiber's thread index (the block's indices are globals: one
// block runs at a time).
const dim3& thread_idx();
extern dim3 g_block_idx, g_block_dim, g_grid_dim;

void syncthreads();

// One warp collective: `kind` is one of the Warp* values, `arg` its lane
// argument, `bytes` the size of `value` (at most 8). Returns through
// `result` what the lane receives.
enum WarpOp { WarpIdx, WarpUp, WarpDown, WarpXor, WarpSync, WarpBallot };
void warp_collective(WarpOp kind, unsigned mask, const void* value, unsigned bytes, int arg,
                     int width, void* result);

template <typename T>
inline T shuffle(WarpOp kind, unsigned mask, T v, int arg, int width) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    T r;
    warp_collective(kind, mask, &v, sizeof(T), arg, width, &r);
    return r;
}

}  // namespace kbemu

#define threadIdx (::kbemu::thread_idx())
#define blockIdx (::kbemu::g_block_idx)
#define blockDim (::kbemu::g_block_dim)
#define gridDim (::kbemu::g_grid_dim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
// Static shared memory: one copy per kernel in the section `kbemu_shared`,
// which the scheduler fills with NaN bytes before every block (a read
// before the write that should precede it then gives NaN, as stale data).
#define __shared__ static __attribute__((section("kbemu_shared"), aligned(16)))

#define __syncthreads() ::kbemu::syncthreads()

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return ::kbemu::shuffle(::kbemu::WarpIdx, mask, v, src, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::kbemu::shuffle(::kbemu::WarpUp, mask, v, (int)delta, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::kbemu::shuffle(::kbemu::WarpDown, mask, v, (int)delta, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::kbemu::shuffle(::kbemu::WarpXor, mask, v, lane_mask, width);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::kbemu::warp_collective(::kbemu::WarpSync, mask, nullptr, 0, 0, 32, nullptr);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    int p = pred != 0;
    unsigned r;
    ::kbemu::warp_collective(::kbemu::WarpBallot, mask, &p, sizeof p, 0, 32, &r);
    return r;
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

// Bit casts and math intrinsics. The fast approximations (__expf, rsqrtf)
// are computed exactly here; their GPU error is within the backend's
// tolerances, and the emulator checks logic, not last bits.
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; memcpy(&x, &f, 4); return x; }
inline double __longlong_as_double(long long x) { double f; memcpy(&f, &x, 8); return f; }
inline long long __double_as_longlong(double f) { long long x; memcpy(&x, &f, 8); return x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// The registry entry of one kernel: its name, its parameter sizes (checked
// against the PTX at module load) and a trampoline that unpacks the
// driver's `kernelParams` array into the C++ call.
namespace kbemu {
typedef void (*AnyFn)();
struct KernelInfo {
    const char* name;
    AnyFn fn;
    void (*invoke)(AnyFn, void**);
    unsigned nparams;
    unsigned char param_sizes[24];
};

template <size_t... I>
struct Indices {};
template <size_t N, size_t... I>
struct MakeIndices : MakeIndices<N - 1, N - 1, I...> {};
template <size_t... I>
struct MakeIndices<0, I...> {
    typedef Indices<I...> type;
};

template <typename... A, size_t... I>
inline void call_with(void (*f)(A...), void** p, Indices<I...>) {
    f(*static_cast<A*>(p[I])...);
}

template <typename... A>
void trampoline(AnyFn f, void** p) {
    call_with(reinterpret_cast<void (*)(A...)>(f), p, typename MakeIndices<sizeof...(A)>::type());
}

template <typename... A>
KernelInfo kernel_info(const char* name, void (*f)(A...)) {
    static_assert(sizeof...(A) <= 24, "more kernel parameters than the registry holds");
    KernelInfo k = {name, reinterpret_cast<AnyFn>(f), &trampoline<A...>, sizeof...(A), {}};
    const unsigned char sizes[] = {(unsigned char)sizeof(A)..., 0};
    for (unsigned i = 0; i < sizeof...(A); i++) k.param_sizes[i] = sizes[i];
    return k;
}

struct KernelTable {
    const KernelInfo* kernels;
    unsigned count;
};
}  // namespace kbemu
