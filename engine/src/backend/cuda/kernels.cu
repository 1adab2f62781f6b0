// pdserve CUDA kernels, compiled at start-up with NVRTC (no CUDA headers needed:
// bf16 is handled as raw 16-bit values and widened to f32 by hand).
//
// Conventions shared with the CPU backend (engine/src/backend/cpu/ops.rs):
// - activations are row-major [rows][dim]; math in f32, storage in bf16;
// - RoPE rotates the two halves of each head ("rotate half"): for i < half,
//   lo' = lo*cos - hi*sin, hi' = hi*cos + lo*sin, with tables [rows][half];
// - one thread block per row for the row-wise reductions.

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

// out[r] = table[tokens[r]]; grid (rows). Token ids are checked on the host.
extern "C" __global__ void embed_bf16(const bf16* __restrict__ table,
                                      const unsigned int* __restrict__ tokens,
                                      bf16* __restrict__ out, int dim) {
    const bf16* src = table + (size_t)tokens[blockIdx.x] * dim;
    bf16* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        dst[i] = src[i];
    }
}
