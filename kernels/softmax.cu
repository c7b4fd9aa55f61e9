// Row-wise softmax kernels (one row per warp, 8 warps per 256-thread block, rows taken
// grid-stride) and the partial sums behind Backend::sum. Like the CPU backend, the
// exponentials and their sums are computed in double; the maximum is the row's first
// maximum, so the argmax agrees with the CPU backend on ties.
#include "common.cuh"

#define NO_INDEX 0x7fffffff

// (256, 4): with the bare block bound ptxas 12.9 settled on 48 registers and spilled.
extern "C" __global__ void __launch_bounds__(256, 4)
    softmax_xent(const float* __restrict__ logits, const unsigned* __restrict__ labels, int rows,
                 int cols, float grad_scale, float* __restrict__ grad,
                 float* __restrict__ loss_acc, float* __restrict__ correct_acc) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    const double scale = (double)grad_scale;
    for (int r = blockIdx.x * warps + threadIdx.x / WARP_SIZE; r < rows; r += gridDim.x * warps) {
        const float* z = logits + (long long)r * cols;
        float* g = grad + (long long)r * cols;
        const int label = (int)labels[r];

        float zmax = neg_infinity();
        int arg = NO_INDEX;
        for (int c = lane; c < cols; c += WARP_SIZE) {
            float v = z[c];
            if (arg == NO_INDEX || v > zmax) {
                zmax = v;
                arg = c;
            }
        }
        warp_argmax(zmax, arg);
        const double max = (double)zmax;

        double s = 0.0;
        for (int c = lane; c < cols; c += WARP_SIZE) {
            s += exp((double)z[c] - max);
        }
        const double denom = warp_sum(s);

        for (int c = lane; c < cols; c += WARP_SIZE) {
            double p = exp((double)z[c] - max) / denom;
            double y = c == label ? 1.0 : 0.0;
            g[c] = (float)(scale * (p - y));
        }
        if (lane == 0) {
            loss_acc[r] += (float)(log(denom) - ((double)z[label] - max));
            if (arg == label) {
                correct_acc[r] += 1.0f;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 4) softmax_rows(float* __restrict__ x, int rows, int cols) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    for (int r = blockIdx.x * warps + threadIdx.x / WARP_SIZE; r < rows; r += gridDim.x * warps) {
        float* row = x + (long long)r * cols;

        float m = neg_infinity();
        for (int c = lane; c < cols; c += WARP_SIZE) {
            m = fmaxf(m, row[c]);
        }
        const double max = (double)warp_max(m);

        double s = 0.0;
        for (int c = lane; c < cols; c += WARP_SIZE) {
            s += exp((double)row[c] - max);
        }
        const double denom = warp_sum(s);

        for (int c = lane; c < cols; c += WARP_SIZE) {
            row[c] = (float)(exp((double)row[c] - max) / denom);
        }
    }
}

// partial[blockIdx.x] = the sum, in double, of the elements this block visits grid-stride;
// the host adds the gridDim.x partials. A block with no elements writes 0. The grouping of
// the additions depends on the grid, so unlike the other kernels the total can differ
// between grid sizes in the last bits of the double (far below f32 resolution).
extern "C" __global__ void __launch_bounds__(256)
    sum_partial(const float* __restrict__ x, int len, double* __restrict__ partial) {
    __shared__ double warp_sums[1024 / WARP_SIZE];
    double s = 0.0;
    GRID_STRIDE_LOOP(i, len) { s += (double)x[i]; }
    s = warp_sum(s);
    const int warp = threadIdx.x / WARP_SIZE;
    if (threadIdx.x % WARP_SIZE == 0) {
        warp_sums[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < (int)(blockDim.x / WARP_SIZE); ++w) {
            total += warp_sums[w];
        }
        partial[blockIdx.x] = total;
    }
}
