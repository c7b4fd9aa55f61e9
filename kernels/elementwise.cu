// Elementwise kernels and the column sum. Block size 256 for all; every kernel loops
// grid-stride, so any grid gives the same results bit for bit. The formulas follow
// CpuBackend (src/device/cpu.rs) operation for operation, in f32.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) fill_f32(float* __restrict__ x, int len, float v) {
    GRID_STRIDE_LOOP(i, len) { x[i] = v; }
}

// x[r][c] = act(x[r][c] + bias[c]), act = identity or ReLU.
extern "C" __global__ void __launch_bounds__(256)
    bias_act(float* __restrict__ x, const float* __restrict__ bias, int rows, int cols, int relu) {
    int len = rows * cols;  // the host refuses shapes over INT_MAX elements
    if (relu) {
        GRID_STRIDE_LOOP(i, len) { x[i] = fmaxf(x[i] + bias[(int)i % cols], 0.0f); }
    } else {
        GRID_STRIDE_LOOP(i, len) { x[i] = x[i] + bias[(int)i % cols]; }
    }
}

// grad[i] = 0 where the ReLU's output act[i] <= 0.
extern "C" __global__ void __launch_bounds__(256)
    relu_grad(float* __restrict__ grad, const float* __restrict__ act, int len) {
    GRID_STRIDE_LOOP(i, len) {
        if (act[i] <= 0.0f) {
            grad[i] = 0.0f;
        }
    }
}

// out[c] = sum over r of x[r][c], one thread per column, summed in row order like the CPU
// backend (so the result is bit-identical to it). Neighbouring threads read neighbouring
// columns of a row, so the loads coalesce.
extern "C" __global__ void __launch_bounds__(256)
    col_sum(const float* __restrict__ x, int rows, int cols, float* __restrict__ out) {
    GRID_STRIDE_LOOP(c, cols) {
        float s = 0.0f;
        const float* p = x + c;
        for (int r = 0; r < rows; ++r, p += cols) {
            s += *p;
        }
        out[c] = s;
    }
}

// SGD with momentum, L2 weight decay added to the gradient (PyTorch semantics).
extern "C" __global__ void __launch_bounds__(256)
    sgd_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v, int len,
             float lr, float momentum, float weight_decay) {
    GRID_STRIDE_LOOP(i, len) {
        float pi = p[i];
        float gi = g[i] + weight_decay * pi;
        float vi = momentum * v[i] + gi;
        v[i] = vi;
        p[i] = pi - lr * vi;
    }
}

// Adam, L2 weight decay added to the gradient. The bias corrections come from the host:
// step_size = lr / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t), computed in f64.
extern "C" __global__ void __launch_bounds__(256)
    adam_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
              float* __restrict__ v, int len, float b1, float b2, float eps, float weight_decay,
              float step_size, float inv_sqrt_bc2) {
    GRID_STRIDE_LOOP(i, len) {
        float pi = p[i];
        float gi = g[i] + weight_decay * pi;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        p[i] = pi - step_size * mi / denom;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    f32_to_bf16(const float* __restrict__ x, unsigned short* __restrict__ y, int len) {
    GRID_STRIDE_LOOP(i, len) { y[i] = float_to_bf16(x[i]); }
}

extern "C" __global__ void __launch_bounds__(256)
    bf16_to_f32(const unsigned short* __restrict__ x, float* __restrict__ y, int len) {
    GRID_STRIDE_LOOP(i, len) { y[i] = bf16_to_float(x[i]); }
}
