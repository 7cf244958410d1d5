// Kernels for the emulator's own tests (src/tests.rs): what it must run
// right, and the mistakes it must catch. Written like kernels.cu, compiled
// the same way.

#define FULL 0xffffffffu

// out[block] = sum of x over the block, by warp shuffles and one shared
// array between two barriers.
extern "C" __global__ void st_block_sum(const float* x, float* out) {
    __shared__ float part[32];
    int t = threadIdx.x, lane = t % 32, warp = t / 32;
    float v = x[blockIdx.x * blockDim.x + t];
    for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(FULL, v, o);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) s += part[w];
        out[blockIdx.x] = s;
    }
}

// The same without the barrier: thread 0 reads partials other warps may
// not have written yet.
extern "C" __global__ void st_block_sum_racy(const float* x, float* out) {
    __shared__ float part[32];
    int t = threadIdx.x, lane = t % 32, warp = t / 32;
    float v = x[blockIdx.x * blockDim.x + t];
    for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(FULL, v, o);
    if (lane == 0) part[warp] = v;
    if (t == 0) {
        float s = 0.0f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) s += part[w];
        out[blockIdx.x] = s;
    }
}

// The four shuffles on lane numbers: out[lane * 4 + i].
extern "C" __global__ void st_shuffles(int* out) {
    int lane = threadIdx.x;
    out[lane * 4 + 0] = __shfl_down_sync(FULL, lane, 3);
    out[lane * 4 + 1] = __shfl_up_sync(FULL, lane, 2);
    out[lane * 4 + 2] = __shfl_xor_sync(FULL, lane, 5);
    out[lane * 4 + 3] = __shfl_sync(FULL, lane, 7);
}

// Every lane calls a shuffle whose mask names only the low half.
extern "C" __global__ void st_bad_mask(float* out) {
    out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, (float)threadIdx.x, 1);
}

// Half a warp waits at a barrier, the other half at a full-warp shuffle:
// each waits for the other.
extern "C" __global__ void st_deadlock(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16)
        __syncthreads();
    else
        v = __shfl_sync(FULL, v, 0);
    out[threadIdx.x] = v;
}

// Writes x[n]: one past the end of an n-element buffer.
extern "C" __global__ void st_write_past_end(float* x, int n) {
    if (threadIdx.x == 0) x[n] = 1.0f;
}

// Writes x[-1]: just before the start of the buffer.
extern "C" __global__ void st_write_before_start(float* x, int n) {
    if (threadIdx.x == 0) x[-1] = 1.0f + n;
}

// Each thread writes its flat thread and block numbers, checking the index
// mapping of 3-D blocks and grids.
extern "C" __global__ void st_indices(unsigned* out) {
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned per = blockDim.x * blockDim.y * blockDim.z;
    out[2 * (b * per + t)] = t;
    out[2 * (b * per + t) + 1] = b;
}
