// Direct 3x3 convolution of one CLRB stage for grouped convs with few channels per group (the student's
// g = 43 CLRB: conv_k's groups read k + 1 channels and write 1 (conv_1..4) or 2 (conv_5)). One thread per output
// pixel and group; the 3x3 neighbourhood comes through L1, the group's weights are uniform across the block.
// Memory-bound: each stage reads its input planes about once from DRAM and writes its output slot once, the
// LReLU / residual applied before the store. Any groups, fp32/bf16/fp16, fp32 accumulation.
#include "clrb_device.cuh"

namespace csakd_cuda {
namespace {

constexpr int kTileW = 32;  // a warp covers 32 consecutive pixels of a row: coalesced loads and stores
constexpr int kTileH = 8;
constexpr int kThreads = kTileW * kTileH;
constexpr int kOutsPerPass = 4;  // output channels of a group accumulated together (registers)

template <typename T>
__global__ void __launch_bounds__(kThreads, 4) direct_conv_kernel(const csakd_conv_args a) {
  const int H = a.height, W = a.width;
  const int tiles_x = (W + kTileW - 1) / kTileW;
  const int x = (blockIdx.x % tiles_x) * kTileW + (threadIdx.x % kTileW);
  const int y = (blockIdx.x / tiles_x) * kTileH + (threadIdx.x / kTileW);
  if (x >= W || y >= H) return;
  const int group = blockIdx.y, b = blockIdx.z;
  const int cin_g = a.cin / a.groups, cout_g = a.cout / a.groups;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const T* in = static_cast<const T*>(a.input) + b * a.input_batch_stride +
                static_cast<int64_t>(group) * cin_g * plane;
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);

  for (int co0 = 0; co0 < cout_g; co0 += kOutsPerPass) {
    const int first_out = group * cout_g + co0;
    float acc[kOutsPerPass];
#pragma unroll
    for (int j = 0; j < kOutsPerPass; ++j) acc[j] = co0 + j < cout_g ? to_float(__ldg(bias + first_out + j)) : 0.f;
    for (int ci = 0; ci < cin_g; ++ci) {
      const T* src = in + ci * plane;
      float v[9];
#pragma unroll
      for (int t = 0; t < 9; ++t) {
        const int yy = y + t / 3 - 1, xx = x + t % 3 - 1;
        v[t] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? to_float(__ldg(src + static_cast<int64_t>(yy) * W + xx))
                                                        : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kOutsPerPass; ++j) {
        if (co0 + j < cout_g) {
          const T* w = weight + (static_cast<int64_t>(first_out + j) * cin_g + ci) * 9;
#pragma unroll
          for (int t = 0; t < 9; ++t) acc[j] = fmaf(to_float(__ldg(w + t)), v[t], acc[j]);
        }
      }
    }
    const int64_t pixel = static_cast<int64_t>(y) * W + x;
#pragma unroll
    for (int j = 0; j < kOutsPerPass; ++j) {
      if (co0 + j < cout_g) store_epilogue<T>(a, b, first_out + j, pixel, acc[j]);
    }
  }
}

template <typename T>
cudaError_t launch_direct(const csakd_conv_args& a, cudaStream_t stream) {
  const unsigned tiles = static_cast<unsigned>((a.width + kTileW - 1) / kTileW) *
                         static_cast<unsigned>((a.height + kTileH - 1) / kTileH);
  const dim3 grid(tiles, static_cast<unsigned>(a.groups), static_cast<unsigned>(a.batch));
  direct_conv_kernel<T><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
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
