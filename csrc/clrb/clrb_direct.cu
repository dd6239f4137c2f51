// Direct 3x3 convolution of one CLRB stage for grouped convs with few channels per group (the student's g = 43
// CLRB: conv_k's groups read k + 1 channels and write 1 (conv_1..4) or 2 (conv_5)).
//
// One block per (batch item, group, 32 x TILE_H pixel tile). The block stages its group's input channels over the
// tile plus a one-pixel halo in shared memory (fp32, coalesced loads, zero padding written there once) together
// with the group's weights; each thread then computes a column of ROWS output pixels for OUTS output channels,
// sliding down the column so that every staged value it reads feeds up to three output rows. Global memory sees
// each input element about once per block (halo overhead (34 x (TILE_H + 2)) / (32 x TILE_H)) and each output once,
// with the LReLU / residual applied before the store. Any groups, fp32/bf16/fp16, fp32 accumulation; groups with
// many input channels are staged in chunks of kMaxChunk channels, more than OUTS outputs in several passes.
//
// Why not fuse the five convs per tile: group g of conv_k reads channels [g (k + 2), (g + 1)(k + 2)) of the
// concatenation [x, x_1, ..., x_k], which for g = 43 mixes channels of x and of earlier x_j produced by *other*
// groups, so a fused tile would need all 86 + 4 * 43 channels over a 5-pixel halo: far beyond shared memory.
#include <algorithm>

#include "clrb_device.cuh"

namespace csakd_cuda {
namespace {

constexpr int kTileW = 32;          // a warp covers one row of 32 pixels: coalesced loads and stores
constexpr int kThreadRows = 4;      // warps per block; warp r computes rows [r ROWS, (r + 1) ROWS) of the tile
constexpr int kThreads = kTileW * kThreadRows;
constexpr int kHaloW = kTileW + 2;
constexpr int kMaxChunk = 8;        // input channels staged at once (8 x 34 x 34 fp32 = 37 KB with ROWS = 8)

template <int ROWS> __host__ __device__ constexpr int tile_h() { return kThreadRows * ROWS; }
template <int ROWS> __host__ __device__ constexpr int halo_pixels() { return kHaloW * (tile_h<ROWS>() + 2); }

template <int ROWS, int OUTS>
size_t shared_bytes(int chunk) {
  return sizeof(float) * (static_cast<size_t>(chunk) * halo_pixels<ROWS>() + static_cast<size_t>(OUTS) * chunk * 9);
}

template <typename T, int ROWS, int OUTS>
__global__ void __launch_bounds__(kThreads) grouped_conv_kernel(const csakd_conv_args a, int chunk) {
  constexpr int kTileH = tile_h<ROWS>(), kHaloPixels = halo_pixels<ROWS>();
  extern __shared__ float smem[];
  float* tile = smem;                           // [chunk][kTileH + 2][kHaloW], zero outside the image
  float* wsm = smem + chunk * kHaloPixels;      // [OUTS][n][9] for the staged channels

  const int H = a.height, W = a.width;
  const int tiles_x = (W + kTileW - 1) / kTileW;
  const int x0 = static_cast<int>(blockIdx.x % tiles_x) * kTileW, y0 = static_cast<int>(blockIdx.x / tiles_x) * kTileH;
  const int group = blockIdx.y, b = blockIdx.z;
  const int cin_g = a.cin / a.groups, cout_g = a.cout / a.groups;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const T* in = static_cast<const T*>(a.input) + b * a.input_batch_stride + static_cast<int64_t>(group) * cin_g * plane;
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  const int tx = threadIdx.x % kTileW, row0 = (threadIdx.x / kTileW) * ROWS;

  for (int co0 = 0; co0 < cout_g; co0 += OUTS) {
    const int first_out = group * cout_g + co0;  // global output channel of acc[0]
    float acc[OUTS][ROWS];
#pragma unroll
    for (int j = 0; j < OUTS; ++j) {
      const float b0 = co0 + j < cout_g ? to_float(bias[first_out + j]) : 0.f;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[j][r] = b0;
    }
    for (int c0 = 0; c0 < cin_g; c0 += chunk) {
      const int n = min(chunk, cin_g - c0);
      __syncthreads();  // the previous chunk (or pass) is no longer read
      for (int i = threadIdx.x; i < n * kHaloPixels; i += kThreads) {
        const int c = i / kHaloPixels, p = i - c * kHaloPixels;
        const int yy = y0 - 1 + p / kHaloW, xx = x0 - 1 + p % kHaloW;
        tile[i] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                      ? to_float(in[(c0 + c) * plane + static_cast<int64_t>(yy) * W + xx])
                      : 0.f;
      }
      for (int i = threadIdx.x; i < OUTS * n * 9; i += kThreads) {
        const int j = i / (n * 9), r = i - j * n * 9;  // r = staged channel * 9 + tap
        wsm[i] = co0 + j < cout_g
                     ? to_float(weight[(static_cast<int64_t>(first_out + j) * cin_g + c0) * 9 + r])
                     : 0.f;
      }
      __syncthreads();
      for (int c = 0; c < n; ++c) {
        float w[OUTS][9];
#pragma unroll
        for (int j = 0; j < OUTS; ++j) {
#pragma unroll
          for (int t = 0; t < 9; ++t) w[j][t] = wsm[(j * n + c) * 9 + t];
        }
        // Staged row s of the column (halo row row0 + s) feeds output rows s - 2, s - 1 and s (tap rows 2, 1, 0).
        const float* src = tile + c * kHaloPixels + row0 * kHaloW + tx;
#pragma unroll
        for (int s = 0; s < ROWS + 2; ++s) {
          const float v0 = src[s * kHaloW], v1 = src[s * kHaloW + 1], v2 = src[s * kHaloW + 2];
#pragma unroll
          for (int dy = 0; dy < 3; ++dy) {
            const int r = s - dy;
            if (r >= 0 && r < ROWS) {
#pragma unroll
              for (int j = 0; j < OUTS; ++j) {
                acc[j][r] = fmaf(w[j][dy * 3], v0, acc[j][r]);
                acc[j][r] = fmaf(w[j][dy * 3 + 1], v1, acc[j][r]);
                acc[j][r] = fmaf(w[j][dy * 3 + 2], v2, acc[j][r]);
              }
            }
          }
        }
      }
    }
    const int x = x0 + tx;
    if (x < W) {
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int y = y0 + row0 + r;
        if (y < H) {
#pragma unroll
          for (int j = 0; j < OUTS; ++j) {
            if (co0 + j < cout_g) store_epilogue<T>(a, b, first_out + j, static_cast<int64_t>(y) * W + x, acc[j][r]);
          }
        }
      }
    }
  }
}

template <typename T, int ROWS, int OUTS>
cudaError_t launch(const csakd_conv_args& a, cudaStream_t stream) {
  const int chunk = std::min(a.cin / a.groups, kMaxChunk);
  const unsigned tiles = static_cast<unsigned>((a.width + kTileW - 1) / kTileW) *
                         static_cast<unsigned>((a.height + tile_h<ROWS>() - 1) / tile_h<ROWS>());
  const dim3 grid(tiles, static_cast<unsigned>(a.groups), static_cast<unsigned>(a.batch));
  grouped_conv_kernel<T, ROWS, OUTS><<<grid, kThreads, shared_bytes<ROWS, OUTS>(chunk), stream>>>(a, chunk);
  return cudaGetLastError();
}

// Tall tiles (8 rows a thread) give the most reuse; where they would leave SMs idle (LR images at batch 1, few
// groups) the short ones (2 rows) give four times as many blocks.
template <typename T, int OUTS>
cudaError_t launch_rows(const csakd_conv_args& a, cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t tall_blocks = static_cast<int64_t>((a.width + kTileW - 1) / kTileW) *
                              ((a.height + tile_h<8>() - 1) / tile_h<8>()) * a.groups * a.batch;
  return tall_blocks >= 4 * static_cast<int64_t>(sms) ? launch<T, 8, OUTS>(a, stream) : launch<T, 2, OUTS>(a, stream);
}

template <typename T>
cudaError_t launch_direct(const csakd_conv_args& a, cudaStream_t stream) {
  return a.cout / a.groups == 1 ? launch_rows<T, 1>(a, stream) : launch_rows<T, 2>(a, stream);
}

}  // namespace
}  // namespace csakd_cuda

extern "C" cudaError_t csakd_clrb_direct_conv(const csakd_conv_args* args, cudaStream_t stream) {
  using namespace csakd_cuda;
  const csakd_conv_args& a = *args;
  if (a.groups < 1 || a.cin % a.groups || a.cout % a.groups || a.groups > 65535 || a.batch > 65535) {
    return cudaErrorInvalidValue;
  }
  if (a.batch == 0 || a.height == 0 || a.width == 0) return cudaSuccess;
  switch (a.dtype) {
    case CSAKD_FLOAT32: return launch_direct<float>(a, stream);
    case CSAKD_BFLOAT16: return launch_direct<__nv_bfloat16>(a, stream);
    case CSAKD_FLOAT16: return launch_direct<__half>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}
