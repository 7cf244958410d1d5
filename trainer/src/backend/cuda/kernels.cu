// kilobyte's CUDA kernels: one forward and one backward per op of the
// `Backend` trait (trainer/src/backend/mod.rs documents each op's math and
// conventions). Compiled at run time by NVRTC, so this file includes no
// headers at all: bf16 is handled as 16-bit integers with bit operations,
// which compiles the same under every CUDA version's NVRTC.
//
// Determinism: every reduction runs in a fixed order (fixed grid sizes,
// per-thread loops, then a fixed shuffle tree), and no kernel uses atomics,
// so a step gives bit-identical results on every run on the same GPU, which
// kill-and-resume relies on. Gradient outputs are accumulated (`+=`) and
// each gradient element is written by exactly one thread.
//
// Sizes are `int` (every buffer the models use has fewer than 2^31
// elements); products that index large buffers are done in `long long`.

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#define WARP 32
#define FULL_MASK 0xffffffffu
#define KB_INF __int_as_float(0x7f800000)

// ---------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_down_sync(FULL_MASK, v, o);
    return __shfl_sync(FULL_MASK, v, 0);
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_down_sync(FULL_MASK, v, o));
    return __shfl_sync(FULL_MASK, v, 0);
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_down_sync(FULL_MASK, v, o);
    return __shfl_sync(FULL_MASK, v, 0);
}

// Reduction over the block (blockDim.x a multiple of 32, at most 1024) with
// warp reducer `warp_op` and identity `init`, returned to every thread.
// `scratch` holds 32 values; the block synchronises.
template <typename T, T (*warp_op)(T)>
__device__ T block_reduce(T v, T* scratch, T init) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int warps = blockDim.x / WARP;
    v = warp_op(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : init;
    return warp_op(v);
}

__device__ float block_sum(float v, float* scratch) { return block_reduce<float, warp_sum>(v, scratch, 0.0f); }
__device__ float block_max(float v, float* scratch) { return block_reduce<float, warp_max>(v, scratch, -KB_INF); }
__device__ double block_sum_d(double v, double* scratch) {
    return block_reduce<double, warp_sum_d>(v, scratch, 0.0);
}

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ---------------------------------------------------------------------------
// Whole-buffer arithmetic

extern "C" __global__ void kb_scale(float* x, float s, i64 n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

extern "C" __global__ void kb_add_assign(float* dst, const float* src, i64 n) {
    GRID_STRIDE(i, n) dst[i] += src[i];
}

// partial[blockIdx.x] = sum of squares of this block's grid-stride share, in
// double. Launched with a fixed grid, so the host adds the partials in a
// fixed order.
extern "C" __global__ void kb_sum_squares_partial(const float* x, i64 n, double* partial) {
    __shared__ double scratch[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)x[i] * (double)x[i];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Column sums in two passes: partial[j, c] = sum of rows
// [j*chunk, (j+1)*chunk) of column c (row r at x[r*row_stride + c]), then
// out[c] += sum_j partial[j, c]. Grid: (ceil(width/block), chunks).
extern "C" __global__ void kb_colsum_partial(const float* x, int rows, int width, i64 row_stride,
                                             int chunk, float* partial) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int j = blockIdx.y;
    if (c >= width) return;
    int end = min(rows, (j + 1) * chunk);
    float acc = 0.0f;
    for (int r = j * chunk; r < end; r++) acc += x[(i64)r * row_stride + c];
    partial[(i64)j * width + c] = acc;
}

extern "C" __global__ void kb_colsum_finish(const float* partial, int chunks, int width, float* out) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    float acc = 0.0f;
    for (int j = 0; j < chunks; j++) acc += partial[(i64)j * width + c];
    out[c] += acc;
}

// ---------------------------------------------------------------------------
// bf16 (stored as u16): round to nearest even, NaN kept quiet.

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x40u);
    u32 rounding = 0x7fffu + ((x >> 16) & 1u);
    return (u16)((x + rounding) >> 16);
}

extern "C" __global__ void kb_to_bf16(const float* x, u16* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = f32_to_bf16(x[i]);
}

// ---------------------------------------------------------------------------
// Elementwise ops

extern "C" __global__ void kb_bias_forward(float* out, const float* inp, const float* bias,
                                           int rows, int width) {
    GRID_STRIDE(i, (i64)rows * width) out[i] = inp[i] + bias[i % width];
}

// out[r, :] += bias (matmul's fused bias).
extern "C" __global__ void kb_bias_inplace(float* out, const float* bias, int rows, int width) {
    GRID_STRIDE(i, (i64)rows * width) out[i] += bias[i % width];
}

__device__ __forceinline__ float gelu(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

extern "C" __global__ void kb_gelu_forward(float* out, const float* inp, i64 n) {
    GRID_STRIDE(i, n) out[i] = gelu(inp[i]);
}

extern "C" __global__ void kb_gelu_backward(float* dinp, const float* inp, const float* dout, i64 n) {
    const float k = 0.7978845608028654f;
    GRID_STRIDE(i, n) {
        float x = inp[i];
        float u = k * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        float du = k * (1.0f + 3.0f * 0.044715f * x * x);
        float g = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
        dinp[i] += g * dout[i];
    }
}

extern "C" __global__ void kb_tanh_forward(float* out, const float* inp, i64 n) {
    GRID_STRIDE(i, n) out[i] = tanhf(inp[i]);
}

extern "C" __global__ void kb_tanh_backward(float* dinp, const float* out, const float* dout, i64 n) {
    GRID_STRIDE(i, n) dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

extern "C" __global__ void kb_add_forward(float* out, const float* a, const float* b, i64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

extern "C" __global__ void kb_add_backward(float* da, float* db, const float* dout, i64 n) {
    GRID_STRIDE(i, n) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

extern "C" __global__ void kb_mul_forward(float* out, const float* a, const float* b, i64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}

extern "C" __global__ void kb_mul_backward(float* da, float* db, const float* dout, const float* a,
                                           const float* b, i64 n) {
    GRID_STRIDE(i, n) {
        float g = dout[i];
        da[i] += g * b[i];
        db[i] += g * a[i];
    }
}

// ---------------------------------------------------------------------------
// LayerNorm: one warp per row.

extern "C" __global__ void kb_layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                                const float* weight, const float* bias, int rows,
                                                int width, float eps) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    const float* x = inp + (i64)row * width;
    float s = 0.0f;
    for (int c = lane; c < width; c += WARP) s += x[c];
    float m = warp_sum(s) / width;
    float v = 0.0f;
    for (int c = lane; c < width; c += WARP) {
        float d = x[c] - m;
        v += d * d;
    }
    float r = rsqrtf(warp_sum(v) / width + eps);
    float* o = out + (i64)row * width;
    for (int c = lane; c < width; c += WARP) o[c] = (x[c] - m) * r * weight[c] + bias[c];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

extern "C" __global__ void kb_layernorm_backward_input(float* dinp, const float* dout, const float* inp,
                                                       const float* weight, const float* mean,
                                                       const float* rstd, int rows, int width) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    const float* x = inp + (i64)row * width;
    const float* g = dout + (i64)row * width;
    float m = mean[row], r = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < width; c += WARP) {
        float dn = g[c] * weight[c];
        s1 += dn;
        s2 += dn * (x[c] - m) * r;
    }
    s1 = warp_sum(s1) / width;
    s2 = warp_sum(s2) / width;
    float* d = dinp + (i64)row * width;
    for (int c = lane; c < width; c += WARP) {
        float xhat = (x[c] - m) * r;
        d[c] += (g[c] * weight[c] - s1 - xhat * s2) * r;
    }
}

// First pass of dweight (= column sums of dout * xhat) and dbias (column sums
// of dout); kb_colsum_finish completes both. Grid: (ceil(width/block), chunks).
extern "C" __global__ void kb_layernorm_backward_params_partial(
    float* partial_w, float* partial_b, const float* dout, const float* inp, const float* mean,
    const float* rstd, int rows, int width, int chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int j = blockIdx.y;
    if (c >= width) return;
    int end = min(rows, (j + 1) * chunk);
    float aw = 0.0f, ab = 0.0f;
    for (int r = j * chunk; r < end; r++) {
        float g = dout[(i64)r * width + c];
        aw += g * (inp[(i64)r * width + c] - mean[r]) * rstd[r];
        ab += g;
    }
    partial_w[(i64)j * width + c] = aw;
    partial_b[(i64)j * width + c] = ab;
}

// ---------------------------------------------------------------------------
// Embeddings and the shift

extern "C" __global__ void kb_embedding_forward(float* out, const float* table, const u32* ids, int rows,
                                                int width, int accumulate) {
    GRID_STRIDE(i, (i64)rows * width) {
        i64 r = i / width;
        int c = (int)(i % width);
        float v = table[(i64)ids[r] * width + c];
        out[i] = accumulate ? out[i] + v : v;
    }
}

// dtable[v, c] += sum over rows i with ids[i] == v of dout[i, c]. Block
// (v, column tile); each thread owns one element and scans the ids in order,
// so repeated ids add up deterministically without atomics.
extern "C" __global__ void kb_embedding_backward(float* dtable, const float* dout, const u32* ids,
                                                 int rows, int width) {
    u32 v = blockIdx.y;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    float acc = 0.0f;
    for (int i = 0; i < rows; i++)
        if (ids[i] == v) acc += dout[(i64)i * width + c];
    dtable[(i64)v * width + c] += acc;
}

extern "C" __global__ void kb_shift_forward(float* out, const float* inp, const float* pad, int seqs,
                                            int len, int width) {
    GRID_STRIDE(i, (i64)seqs * len * width) {
        int c = (int)(i % width);
        int t = (int)((i / width) % len);
        out[i] = t == 0 ? pad[c] : inp[i - width];
    }
}

// dinp[s, t-1] += dout[s, t]; dpad is a column sum (kb_colsum_*) of the rows
// dout[s, 0].
extern "C" __global__ void kb_shift_backward_input(float* dinp, const float* dout, int seqs, int len,
                                                   int width) {
    GRID_STRIDE(i, (i64)seqs * len * width) {
        int t = (int)((i / width) % len);
        if (t + 1 < len) dinp[i] += dout[i + width];
    }
}

// ---------------------------------------------------------------------------
// Causal attention. `probs` (the forward's saved buffer) and `dscores` (the
// backward's scratch) are [batch, heads, seq, seq]
// (row t: query t, column j <= t: key j); entries above the diagonal are
// zero. One block per (query or key row, head, sequence), numbered
// flat (row fastest) so that any batch fits in the grid.

extern "C" __global__ void kb_attention_forward(float* out, float* probs, const float* qkv, int batch,
                                                int seq, int width, int heads) {
    __shared__ float scratch[32];
    int t = blockIdx.x % seq, h = (blockIdx.x / seq) % heads, b = blockIdx.x / (seq * heads);
    int hd = width / heads;
    float scale = rsqrtf((float)hd);
    const float* q = qkv + ((i64)b * seq + t) * 3 * width + h * hd;
    float* p = probs + (((i64)b * heads + h) * seq + t) * seq;
    float mx = -KB_INF;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) {
        if (j > t) {
            p[j] = 0.0f;
            continue;
        }
        const float* k = qkv + ((i64)b * seq + j) * 3 * width + width + h * hd;
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s += q[d] * k[d];
        s *= scale;
        p[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        float e = __expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) p[j] *= inv;
    __syncthreads();
    float* o = out + ((i64)b * seq + t) * width + h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= t; j++) acc += p[j] * qkv[((i64)b * seq + j) * 3 * width + 2 * width + h * hd + d];
        o[d] = acc;
    }
}

// Per query row t: dp_j = dout_t . v_j, ds_j = p_j (dp_j - sum_i p_i dp_i)
// (saved to dscores), dq_t += scale * sum_j ds_j k_j.
extern "C" __global__ void kb_attention_backward_query(float* dqkv, float* dscores, const float* dout,
                                                       const float* qkv, const float* probs, int batch,
                                                       int seq, int width, int heads) {
    __shared__ float scratch[32];
    int t = blockIdx.x % seq, h = (blockIdx.x / seq) % heads, b = blockIdx.x / (seq * heads);
    int hd = width / heads;
    float scale = rsqrtf((float)hd);
    const float* g = dout + ((i64)b * seq + t) * width + h * hd;
    const float* p = probs + (((i64)b * heads + h) * seq + t) * seq;
    float* ds = dscores + (((i64)b * heads + h) * seq + t) * seq;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) {
        if (j > t) {
            ds[j] = 0.0f;
            continue;
        }
        const float* v = qkv + ((i64)b * seq + j) * 3 * width + 2 * width + h * hd;
        float dp = 0.0f;
        for (int d = 0; d < hd; d++) dp += g[d] * v[d];
        ds[j] = dp;
        dot += p[j] * dp;
    }
    dot = block_sum(dot, scratch);
    for (int j = threadIdx.x; j <= t; j += blockDim.x) ds[j] = p[j] * (ds[j] - dot);
    __syncthreads();
    float* dq = dqkv + ((i64)b * seq + t) * 3 * width + h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= t; j++) acc += ds[j] * qkv[((i64)b * seq + j) * 3 * width + width + h * hd + d];
        dq[d] += scale * acc;
    }
}

// Per key row j: dk_j += scale * sum_{t>=j} ds_tj q_t, dv_j += sum_{t>=j} p_tj dout_t.
extern "C" __global__ void kb_attention_backward_key(float* dqkv, const float* dscores, const float* dout,
                                                     const float* qkv, const float* probs, int batch,
                                                     int seq, int width, int heads) {
    int j = blockIdx.x % seq, h = (blockIdx.x / seq) % heads, b = blockIdx.x / (seq * heads);
    int hd = width / heads;
    float scale = rsqrtf((float)hd);
    i64 bh = ((i64)b * heads + h) * seq;
    float* dk = dqkv + ((i64)b * seq + j) * 3 * width + width + h * hd;
    float* dv = dk + width;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float ak = 0.0f, av = 0.0f;
        for (int t = j; t < seq; t++) {
            ak += dscores[(bh + t) * seq + j] * qkv[((i64)b * seq + t) * 3 * width + h * hd + d];
            av += probs[(bh + t) * seq + j] * dout[((i64)b * seq + t) * width + h * hd + d];
        }
        dk[d] += scale * ak;
        dv[d] += av;
    }
}

// ---------------------------------------------------------------------------
// Mean pooling over the counted positions (BiGS classifier). Block: one
// sequence; threads over channels.

__device__ float mask_count(const float* mask, int b, int seq) {
    float n = 0.0f;
    for (int t = 0; t < seq; t++) n += mask[(i64)b * seq + t];
    return n;
}

extern "C" __global__ void kb_mean_pool_forward(float* out, const float* inp, const float* mask, int batch,
                                                int seq, int width) {
    int b = blockIdx.x;
    float n = mask_count(mask, b, seq);
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < seq; t++) acc += mask[(i64)b * seq + t] * inp[((i64)b * seq + t) * width + c];
        out[(i64)b * width + c] = n > 0.0f ? acc / n : 0.0f;
    }
}

extern "C" __global__ void kb_mean_pool_backward(float* dinp, const float* dout, const float* mask,
                                                 int batch, int seq, int width) {
    int b = blockIdx.x;
    float n = mask_count(mask, b, seq);
    if (n <= 0.0f) return;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float g = dout[(i64)b * width + c] / n;
        for (int t = 0; t < seq; t++) dinp[((i64)b * seq + t) * width + c] += mask[(i64)b * seq + t] * g;
    }
}

// ---------------------------------------------------------------------------
// BiGS SSM (trainer/src/bigs/ssm.rs has the math). Complex arithmetic in
// double, as on the CPU.

struct cplx {
    double re, im;
};
__device__ __forceinline__ cplx cmul(cplx a, cplx b) {
    cplx r = {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
    return r;
}
__device__ __forceinline__ cplx cadd(cplx a, cplx b) {
    cplx r = {a.re + b.re, a.im + b.im};
    return r;
}
__device__ __forceinline__ cplx csub(cplx a, cplx b) {
    cplx r = {a.re - b.re, a.im - b.im};
    return r;
}
__device__ __forceinline__ cplx cscale(cplx a, double s) {
    cplx r = {a.re * s, a.im * s};
    return r;
}
__device__ __forceinline__ cplx cdiv(cplx a, cplx b) {
    double den = b.re * b.re + b.im * b.im;
    cplx r = {(a.re * b.re + a.im * b.im) / den, (a.im * b.re - a.re * b.im) / den};
    return r;
}
__device__ __forceinline__ cplx cexp(cplx a) {
    double m = exp(a.re);
    cplx r = {m * cos(a.im), m * sin(a.im)};
    return r;
}

struct ssm_mode {
    double decay;
    cplx a, abar, bbar, c;
};

__device__ ssm_mode make_mode(const float* a, const float* w, const float* c, int i, double dt) {
    ssm_mode m;
    m.decay = exp((double)a[i]);
    m.a.re = -m.decay;
    m.a.im = (double)w[i];
    m.abar = cexp(cscale(m.a, dt));
    cplx one = {1.0, 0.0};
    m.bbar = cdiv(csub(m.abar, one), m.a);
    m.c.re = (double)c[2 * i];
    m.c.im = (double)c[2 * i + 1];
    return m;
}

// kernel[k, l] = Re(sum_n C_n Bbar_n Abar_n^l). Thread per (k, l); Abar^l as
// exp(l dt A), which is the CPU's repeated product up to rounding in double.
extern "C" __global__ void kb_ssm_kernel_forward(float* kernel, const float* a, const float* w, const float* c,
                                                 const float* log_dt, int kernels, int modes, int len) {
    GRID_STRIDE(i, (i64)kernels * len) {
        int k = (int)(i / len), l = (int)(i % len);
        double dt = exp((double)log_dt[k]);
        double acc = 0.0;
        for (int n = 0; n < modes; n++) {
            ssm_mode m = make_mode(a, w, c, k * modes + n, dt);
            cplx pw = cexp(cscale(m.a, dt * l));
            acc += cmul(cmul(m.c, m.bbar), pw).re;
        }
        kernel[i] = (float)acc;
    }
}

// Thread per (k, n): the mode's parameter gradients, and its share of
// d loss / d dt in ddt[k, n] (kb_ssm_kernel_backward_dt adds the modes up).
extern "C" __global__ void kb_ssm_kernel_backward_modes(float* da, float* dw, float* dc, double* ddt,
                                                        const float* dkernel, const float* a, const float* w,
                                                        const float* c, const float* log_dt, int kernels,
                                                        int modes, int len) {
    GRID_STRIDE(i, (i64)kernels * modes) {
        int k = (int)(i / modes);
        double dt = exp((double)log_dt[k]);
        ssm_mode m = make_mode(a, w, c, (int)i, dt);
        cplx s0 = {0.0, 0.0}, s1 = {0.0, 0.0}, p = {1.0, 0.0};
        const float* g = dkernel + (i64)k * len;
        for (int l = 0; l < len; l++) {
            double gl = (double)g[l];
            s0 = cadd(s0, cscale(p, gl));
            s1 = cadd(s1, cscale(p, gl * l));
            p = cmul(p, m.abar);
        }
        cplx z = cmul(m.c, m.bbar);
        cplx dh_dc = cmul(m.bbar, s0);
        cplx dbbar_da = cdiv(csub(cscale(m.abar, dt), m.bbar), m.a);
        cplx dh_da = cadd(cmul(cmul(m.c, s0), dbbar_da), cmul(z, cscale(s1, dt)));
        cplx dh_ddt = cadd(cmul(cmul(m.c, s0), m.abar), cmul(cmul(z, s1), m.a));
        dc[2 * i] += (float)dh_dc.re;
        dc[2 * i + 1] += (float)(-dh_dc.im);
        da[i] += (float)(-dh_da.re * m.decay);
        dw[i] += (float)(-dh_da.im);
        ddt[i] = dh_ddt.re;
    }
}

extern "C" __global__ void kb_ssm_kernel_backward_dt(float* dlog_dt, const double* ddt, const float* log_dt,
                                                     int kernels, int modes) {
    GRID_STRIDE(k, kernels) {
        double acc = 0.0;
        for (int n = 0; n < modes; n++) acc += ddt[k * modes + n];
        dlog_dt[k] += (float)(acc * exp((double)log_dt[k]));
    }
}

// The row of logical step t of a sequence of real length len (dir 0: left
// to right, 1: right to left).
__device__ __forceinline__ int step_row(int dir, int t, int len) { return dir ? len - 1 - t : t; }

// y[b, r, c] = D u[r] + sum_{j<=t} K[j] u[row(t - j)], t the step of row r;
// zero on padding rows. Thread per output element.
extern "C" __global__ void kb_ssm_conv_forward(float* y, const float* u, const float* kernel, const float* d,
                                               const u32* lengths, int batch, int seq, int width, int kernels,
                                               int dir) {
    int per = width / kernels;
    GRID_STRIDE(i, (i64)batch * seq * width) {
        int c = (int)(i % width);
        int r = (int)((i / width) % seq);
        int b = (int)(i / ((i64)width * seq));
        int len = (int)lengths[b];
        if (r >= len) {
            y[i] = 0.0f;
            continue;
        }
        int k = c / per;
        int t = step_row(dir, r, len);
        const float* kern = kernel + (i64)k * seq;
        const float* us = u + (i64)b * seq * width + c;
        float acc = d[k] * us[(i64)r * width];
        for (int j = 0; j <= t; j++) acc += kern[j] * us[(i64)step_row(dir, t - j, len) * width];
        y[i] = acc;
    }
}

// du[b, r, c] += D dy[r] + sum_{t>=i} K[t - i] dy[row(t)], i the step of row
// r; padding rows untouched.
extern "C" __global__ void kb_ssm_conv_backward_input(float* du, const float* dy, const float* kernel,
                                                      const float* d, const u32* lengths, int batch, int seq,
                                                      int width, int kernels, int dir) {
    int per = width / kernels;
    GRID_STRIDE(i, (i64)batch * seq * width) {
        int c = (int)(i % width);
        int r = (int)((i / width) % seq);
        int b = (int)(i / ((i64)width * seq));
        int len = (int)lengths[b];
        if (r >= len) continue;
        int k = c / per;
        int s = step_row(dir, r, len);
        const float* kern = kernel + (i64)k * seq;
        const float* g = dy + (i64)b * seq * width + c;
        float acc = d[k] * g[(i64)r * width];
        for (int t = s; t < len; t++) acc += kern[t - s] * g[(i64)step_row(dir, t, len) * width];
        du[i] += acc;
    }
}

// dkernel[k, l] += sum over sequences b, steps t in [l, len_b) and the
// kernel's channels of dy[row(t)] u[row(t - l)]; the l = 0 sum is also dD[k].
// Block (l, k); threads split the (b, t, channel) terms, then a block sum.
extern "C" __global__ void kb_ssm_conv_backward_kernel(float* dkernel, float* dd, const float* dy,
                                                       const float* u, const u32* lengths, int batch, int seq,
                                                       int width, int kernels, int dir) {
    __shared__ float scratch[32];
    int l = blockIdx.x, k = blockIdx.y;
    int per = width / kernels;
    float acc = 0.0f;
    for (int b = 0; b < batch; b++) {
        int len = (int)lengths[b];
        int terms = (len - l) * per;
        const float* gs = dy + (i64)b * seq * width + k * per;
        const float* us = u + (i64)b * seq * width + k * per;
        for (int e = threadIdx.x; e < terms; e += blockDim.x) {
            int t = l + e / per, ch = e % per;
            acc += gs[(i64)step_row(dir, t, len) * width + ch] * us[(i64)step_row(dir, t - l, len) * width + ch];
        }
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        dkernel[(i64)k * seq + l] += acc;
        if (l == 0) dd[k] += acc;
    }
}

// ---------------------------------------------------------------------------
// Softmax cross-entropy, fused with the logits' gradient. Pass 1 (one warp
// per row) writes each row's weighted loss, weight and log-sum-exp; the host
// adds the losses and weights in order (the count), then pass 2 writes
// dlogits = (softmax - onehot) * weight * scale.

extern "C" __global__ void kb_cross_entropy_rows(float* loss, float* weight, float* lse, const float* logits,
                                                 const u32* targets, const float* mask, int has_mask, int rows,
                                                 int vocab) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    const float* x = logits + (i64)row * vocab;
    float mx = -KB_INF;
    for (int v = lane; v < vocab; v += WARP) mx = fmaxf(mx, x[v]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (int v = lane; v < vocab; v += WARP) s += expf(x[v] - mx);
    s = warp_sum(s);
    if (lane == 0) {
        float m = has_mask ? mask[row] : 1.0f;
        float l = logf(s) + mx;
        lse[row] = l;
        weight[row] = m;
        loss[row] = m != 0.0f ? (l - x[targets[row]]) * m : 0.0f;
    }
}

extern "C" __global__ void kb_cross_entropy_grad(float* dlogits, const float* logits, const float* lse,
                                                 const u32* targets, const float* mask, int has_mask, int rows,
                                                 int vocab, float scale) {
    GRID_STRIDE(i, (i64)rows * vocab) {
        i64 r = i / vocab;
        int v = (int)(i % vocab);
        float m = has_mask ? mask[r] : 1.0f;
        if (m == 0.0f) {
            dlogits[i] = 0.0f;
            continue;
        }
        float p = expf(logits[i] - lse[r]);
        if ((u32)v == targets[r]) p -= 1.0f;
        dlogits[i] = p * m * scale;
    }
}

// ---------------------------------------------------------------------------
// AdamW (fp32 master weights and state).

extern "C" __global__ void kb_adamw(float* param, const float* grad, float* m, float* v, i64 n, float lr,
                                    float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                                    float bc1, float bc2) {
    GRID_STRIDE(i, n) {
        float g = grad[i] * grad_scale;
        float p = param[i] - lr * weight_decay * param[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}
