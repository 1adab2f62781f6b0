// pdserve CUDA kernels, compiled at start-up with NVRTC (no CUDA headers needed:
// bf16 is handled as raw 16-bit values and widened to f32 by hand).
//
// Conventions shared with the CPU backend (engine/src/backend/cpu/ops.rs):
// - activations are row-major [rows][dim]; math in f32, storage in bf16;
// - RoPE rotates the two halves of each head ("rotate half"): for i < half,
//   lo' = lo*cos - hi*sin, hi' = hi*cos + lo*sin, with tables [rows][half];
// - one thread block per row for the row-wise reductions.
//
// Kernels (launched from backend.rs, attention.rs, pick.rs): rms_norm_bf16 (with
// the fused residual add), head_rms_norm_bf16, rope_bf16, silu_mul_bf16,
// add_bf16, add_bias_bf16, gather_rows_bf16 (also the embedding), store_kv_bf16,
// paged_attention_bf16, pick_bf16. Matrix products are cuBLAS, not here.

typedef unsigned short bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 v) {
    return __uint_as_float(((unsigned int)v) << 16);
}

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : 0.0f;
    if (warp == 0) {
        v = warp_sum(v);
        if (lane == 0) {
            partial[0] = v;
        }
    }
    __syncthreads();
    float total = partial[0];
    __syncthreads();
    return total;
}

// out = rms_norm(x (+ residual)) * w, per row. With `residual` non-null, the sum
// x + residual is also written back to `residual` (the fused residual add).
extern "C" __global__ void rms_norm_bf16(const bf16* __restrict__ x,
                                         bf16* __restrict__ residual,
                                         const bf16* __restrict__ w,
                                         bf16* __restrict__ out,
                                         int dim, float eps) {
    const bf16* xr = x + (size_t)blockIdx.x * dim;
    bf16* rr = residual ? residual + (size_t)blockIdx.x * dim : 0;
    bf16* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = bf16_to_f32(xr[i]);
        if (rr) {
            v += bf16_to_f32(rr[i]);
        }
        ss += v * v;
    }
    float scale = rsqrtf(block_sum(ss) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = bf16_to_f32(xr[i]);
        if (rr) {
            v += bf16_to_f32(rr[i]);
            rr[i] = f32_to_bf16(v);
        }
        orow[i] = f32_to_bf16(v * scale * bf16_to_f32(w[i]));
    }
}

// RoPE in place on `x` [rows][heads * head_dim]; grid (rows), threads over
// (head, i < half).
extern "C" __global__ void rope_bf16(bf16* __restrict__ x,
                                     const float* __restrict__ cos_t,
                                     const float* __restrict__ sin_t,
                                     int heads, int head_dim) {
    int half = head_dim / 2;
    int row = blockIdx.x;
    bf16* xr = x + (size_t)row * heads * head_dim;
    const float* c = cos_t + (size_t)row * half;
    const float* s = sin_t + (size_t)row * half;
    for (int t = threadIdx.x; t < heads * half; t += blockDim.x) {
        int h = t / half;
        int i = t % half;
        bf16* head = xr + h * head_dim;
        float lo = bf16_to_f32(head[i]);
        float hi = bf16_to_f32(head[i + half]);
        head[i] = f32_to_bf16(lo * c[i] - hi * s[i]);
        head[i + half] = f32_to_bf16(hi * c[i] + lo * s[i]);
    }
}

// gate = silu(gate) * up, elementwise over n values.
extern "C" __global__ void silu_mul_bf16(bf16* __restrict__ gate,
                                         const bf16* __restrict__ up, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        float g = bf16_to_f32(gate[i]);
        float silu = g / (1.0f + __expf(-g));
        gate[i] = f32_to_bf16(silu * bf16_to_f32(up[i]));
    }
}

// In-place RMSNorm of each head_dim slice (Qwen3's q/k norm); grid (rows * heads).
extern "C" __global__ void head_rms_norm_bf16(bf16* __restrict__ x,
                                              const bf16* __restrict__ w,
                                              int head_dim, float eps) {
    bf16* h = x + (size_t)blockIdx.x * head_dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float v = bf16_to_f32(h[i]);
        ss += v * v;
    }
    float scale = rsqrtf(block_sum(ss) / (float)head_dim + eps);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        h[i] = f32_to_bf16(bf16_to_f32(h[i]) * scale * bf16_to_f32(w[i]));
    }
}

// x += y, elementwise over n values.
extern "C" __global__ void add_bf16(bf16* __restrict__ x, const bf16* __restrict__ y, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
    }
}

// x[r][:] += b for every row; grid (rows).
extern "C" __global__ void add_bias_bf16(bf16* __restrict__ x, const bf16* __restrict__ b,
                                         int dim) {
    bf16* xr = x + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        xr[i] = f32_to_bf16(bf16_to_f32(xr[i]) + bf16_to_f32(b[i]));
    }
}

// out[k] = x[rows[k]]; grid (k). Also the embedding lookup (x = the table,
// rows = the token ids, checked on the host).
extern "C" __global__ void gather_rows_bf16(const bf16* __restrict__ x,
                                            const unsigned int* __restrict__ rows,
                                            bf16* __restrict__ out, int dim) {
    const bf16* src = x + (size_t)rows[blockIdx.x] * dim;
    bf16* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        dst[i] = src[i];
    }
}

// The KV pool (engine/src/kv/pool.rs, KvLayout): block-major; inside a block,
// per layer a K slab then a V slab, each [block_size][kv_dim].
__device__ __forceinline__ size_t kv_slab(size_t block, int layer, int num_layers,
                                          size_t slab_elems) {
    return (block * (size_t)num_layers * 2 + (size_t)layer * 2) * slab_elems;
}

// Writes this step's K and V rows into their slots (slot = block * block_size +
// offset); grid (rows). Slots are checked on the host.
extern "C" __global__ void store_kv_bf16(bf16* __restrict__ kv, const bf16* __restrict__ k,
                                         const bf16* __restrict__ v,
                                         const unsigned int* __restrict__ slots,
                                         int layer, int num_layers, int block_size,
                                         int kv_dim) {
    unsigned int slot = slots[blockIdx.x];
    size_t slab = (size_t)block_size * kv_dim;
    bf16* kd = kv + kv_slab(slot / block_size, layer, num_layers, slab) +
               (size_t)(slot % block_size) * kv_dim;
    bf16* vd = kd + slab;
    const bf16* ks = k + (size_t)blockIdx.x * kv_dim;
    const bf16* vs = v + (size_t)blockIdx.x * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kd[i] = ks[i];
        vd[i] = vs[i];
    }
}

#define ATTN_MAX_PER_LANE 8  // head_dim <= 256

// Causal attention over the paged KV pool, one thread block per (row, q head);
// grid (rows, n_heads), blockDim = 32 * warps, dynamic shared memory
// warps * (head_dim + 2) floats. Row r is at absolute position row_pos[r] and
// attends to its sequence's keys 0..=row_pos[r], whose blocks are
// block_tables[row_table[r]..]. Each warp takes every warps-th key with its own
// running max / sum / accumulator (lanes split head_dim), and the warps' partial
// results are merged at the end (flash-decoding within a block). Decode rows and
// prefill rows take the same path.
extern "C" __global__ void paged_attention_bf16(
    const bf16* __restrict__ q, const bf16* __restrict__ kv, bf16* __restrict__ out,
    const unsigned int* __restrict__ row_pos, const unsigned int* __restrict__ row_table,
    const unsigned int* __restrict__ block_tables, int n_heads, int n_kv_heads, int head_dim,
    int block_size, int num_layers, int layer, float scale) {
    extern __shared__ float smem[];
    const float neg_inf = __int_as_float(0xff800000);
    int row = blockIdx.x;
    int h = blockIdx.y;
    int kvh = h / (n_heads / n_kv_heads);
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    int per = (head_dim + 31) >> 5;
    size_t kv_dim = (size_t)n_kv_heads * head_dim;
    size_t slab = (size_t)block_size * kv_dim;

    const bf16* qr = q + ((size_t)row * n_heads + h) * head_dim;
    float qv[ATTN_MAX_PER_LANE];
    float acc[ATTN_MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATTN_MAX_PER_LANE; j++) {
        int d = lane + 32 * j;
        qv[j] = (j < per && d < head_dim) ? bf16_to_f32(qr[d]) * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = neg_inf;
    float l = 0.0f;
    int n_keys = (int)row_pos[row] + 1;
    const unsigned int* table = block_tables + row_table[row];
    for (int t = warp; t < n_keys; t += warps) {
        const bf16* kp = kv + kv_slab(table[t / block_size], layer, num_layers, slab) +
                         (size_t)(t % block_size) * kv_dim + (size_t)kvh * head_dim;
        const bf16* vp = kp + slab;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < ATTN_MAX_PER_LANE; j++) {
            if (j < per && lane + 32 * j < head_dim) {
                s += qv[j] * bf16_to_f32(kp[lane + 32 * j]);
            }
        }
        s = warp_sum(s);
        float m_new = fmaxf(m, s);
        float corr = __expf(m - m_new);
        float p = __expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < ATTN_MAX_PER_LANE; j++) {
            if (j < per && lane + 32 * j < head_dim) {
                acc[j] = acc[j] * corr + p * bf16_to_f32(vp[lane + 32 * j]);
            }
        }
        m = m_new;
    }
    // Merge: smem[w] = m_w, smem[warps + w] = l_w, then acc_w at 2*warps + w*head_dim.
    float* sm_m = smem;
    float* sm_l = smem + warps;
    float* sm_acc = smem + 2 * warps;
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < ATTN_MAX_PER_LANE; j++) {
        if (j < per && lane + 32 * j < head_dim) {
            sm_acc[warp * head_dim + lane + 32 * j] = acc[j];
        }
    }
    __syncthreads();
    float big = neg_inf;
    for (int w = 0; w < warps; w++) {
        big = fmaxf(big, sm_m[w]);
    }
    float total = 0.0f;
    for (int w = 0; w < warps; w++) {
        total += sm_l[w] * __expf(sm_m[w] - big);
    }
    bf16* orow = out + ((size_t)row * n_heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < warps; w++) {
            o += sm_acc[w * head_dim + d] * __expf(sm_m[w] - big);
        }
        orow[d] = f32_to_bf16(o / total);
    }
}

// ---- sampling on the device (engine/src/sampling/device.rs is the definition) --

// SplitMix64 of seed + (i + 1)·φ, top 24 bits, centred: uniform in (0, 1).
__device__ __forceinline__ float pick_uniform(unsigned long long seed, unsigned int i) {
    unsigned long long z = seed + (unsigned long long)i * 0x9E3779B97F4A7C15ull;
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(unsigned int)(z >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

// (score, index) with the larger score, the lower index on ties.
__device__ __forceinline__ void pick_better(float& s, unsigned int& i, float s2,
                                            unsigned int i2) {
    if (s2 > s || (s2 == s && i2 < i)) {
        s = s2;
        i = i2;
    }
}

// One block per logits row (blockDim a multiple of 32, at most 1024). mode 0:
// skip the row; 1: greedy; 2: Gumbel-max with inv_t[row] and seed[row]. Writes
// the token (0xffffffff when the row has no finite logit: the host decides) and
// its logprob: the logit minus the row's log-sum-exp.
extern "C" __global__ void pick_bf16(const bf16* __restrict__ logits, int vocab,
                                     const int* __restrict__ mode,
                                     const float* __restrict__ inv_t,
                                     const unsigned long long* __restrict__ seed,
                                     unsigned int* __restrict__ token,
                                     float* __restrict__ logprob) {
    __shared__ float sm_s[32];
    __shared__ unsigned int sm_i[32];
    __shared__ float sm_max[32];
    int row = blockIdx.x;
    int m = mode[row];
    if (m == 0) {
        return;
    }
    const float neg_inf = __int_as_float(0xff800000);
    const bf16* lr = logits + (size_t)row * vocab;
    float best_s = neg_inf;
    unsigned int best_i = 0xffffffffu;
    float mx = neg_inf;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float x = bf16_to_f32(lr[i]);
        if (x != x || x == neg_inf) {
            continue;
        }
        mx = fmaxf(mx, x);
        float s = x;
        if (m == 2) {
            float u = pick_uniform(seed[row], (unsigned int)i);
            s = x * inv_t[row] - logf(-logf(u));
        }
        pick_better(best_s, best_i, s, (unsigned int)i);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float s2 = __shfl_xor_sync(0xffffffffu, best_s, o);
        unsigned int i2 = __shfl_xor_sync(0xffffffffu, best_i, o);
        pick_better(best_s, best_i, s2, i2);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    if (lane == 0) {
        sm_s[warp] = best_s;
        sm_i[warp] = best_i;
        sm_max[warp] = mx;
    }
    __syncthreads();
    best_s = neg_inf;
    best_i = 0xffffffffu;
    mx = neg_inf;
    for (int w = 0; w < warps; w++) {
        pick_better(best_s, best_i, sm_s[w], sm_i[w]);
        mx = fmaxf(mx, sm_max[w]);
    }
    float sum = 0.0f;
    if (mx != neg_inf) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float x = bf16_to_f32(lr[i]);
            if (x == x) {
                sum += __expf(x - mx);
            }
        }
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) {
        if (best_i == 0xffffffffu) {
            token[row] = 0xffffffffu;
            logprob[row] = 0.0f;
        } else {
            float lp = bf16_to_f32(lr[best_i]) - (mx + logf(sum));
            token[row] = best_i;
            logprob[row] = fmaxf(lp, -9999.0f);
        }
    }
}
