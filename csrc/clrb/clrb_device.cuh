// Device helpers shared by the CLRB kernels: dtype conversions and the fused epilogue (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "clrb_kernels.h"

namespace csakd_cuda {

constexpr float kSlope = 0.2f;     // LReLU negative slope (SPEC §2)
constexpr float kResScale = 0.2f;  // residual scale of conv_5

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Stores conv output channel `co` at plane offset `pixel` of batch item `b`: lrelu(y) into the buffer slot, or
// residual + 0.2 y for conv_5. y (accumulated in fp32) is rounded to T once.
template <typename T>
__device__ __forceinline__ void store_epilogue(const csakd_conv_args& a, int b, int co, int64_t pixel, float y) {
  const int64_t plane = static_cast<int64_t>(a.height) * a.width;
  const int64_t offset = static_cast<int64_t>(co) * plane + pixel;
  T* out = static_cast<T*>(a.output) + b * a.output_batch_stride;
  if (a.epilogue == CSAKD_EPILOGUE_LRELU) {
    out[offset] = from_float<T>(y > 0.f ? y : kSlope * y);
  } else {
    const T* res = static_cast<const T*>(a.residual) + b * a.residual_batch_stride;
    out[offset] = from_float<T>(to_float(res[offset]) + kResScale * y);
  }
}

}  // namespace csakd_cuda
