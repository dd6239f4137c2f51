/* C-style launchers of the CLRB CUDA kernels (clrb_mma.cu, clrb_direct.cu), called from clrb_cuda.cpp.
 * No torch types cross this boundary: raw pointers, sizes in elements and a cudaStream_t, so that the .cu files
 * compile with nvcc alone (CI compiles them on a machine whose torch has no CUDA).
 *
 * Layout: every tensor is NCHW-contiguous within a batch item; batch strides are given separately so that a
 * conv can read the leading channels of the (B, nf + 4 gc, H, W) concatenation buffer and write its output
 * into a later channel slice of the same buffer. Each launcher returns cudaGetLastError() after the launch,
 * or cudaErrorInvalidValue for arguments it does not support. */
#ifndef CSAKD_CLRB_KERNELS_H
#define CSAKD_CLRB_KERNELS_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CSAKD_FLOAT32 = 0, CSAKD_BFLOAT16 = 1, CSAKD_FLOAT16 = 2 } csakd_dtype;

/* What a conv does with y = conv(input) + bias: LRELU stores lrelu(y, 0.2) (conv_1..4 filling their buffer
 * slot), RESIDUAL stores residual + 0.2 * y (conv_5). */
typedef enum { CSAKD_EPILOGUE_LRELU = 0, CSAKD_EPILOGUE_RESIDUAL = 1 } csakd_epilogue;

typedef struct {
  const void* input;           /* channel 0 of batch item 0; the conv reads channels [0, cin) */
  int64_t input_batch_stride;  /* elements between batch items */
  int batch, height, width;
  int cin, cout, groups;       /* 3x3 conv, stride 1, zero padding 1 */
  const void* weight;          /* direct: (cout, cin / groups, 3, 3) of dtype; mma: packed by csakd_clrb_mma_pack */
  const void* bias;            /* direct: (cout,) of dtype; mma: float[round_up(cout, 16)] packed */
  void* output;                /* output channel 0 of batch item 0 */
  int64_t output_batch_stride;
  const void* residual;        /* RESIDUAL only: (cout, H, W) per batch item */
  int64_t residual_batch_stride;
  int epilogue;                /* csakd_epilogue */
  int dtype;                   /* csakd_dtype of input, weight, output, residual */
} csakd_conv_args;

/* Direct 3x3 conv, any groups, fp32/bf16/fp16 with fp32 accumulation; meant for few channels per group
 * (the g = 43 CLRB: 2..6 inputs, 1..2 outputs per group). */
cudaError_t csakd_clrb_direct_conv(const csakd_conv_args* args, cudaStream_t stream);

/* Tensor-core implicit-GEMM 3x3 conv for groups = 1, fp32 accumulation: bf16/fp16 inputs as they are, fp32 inputs
 * rounded to TF32 (the caller decides whether TF32 is acceptable). */
cudaError_t csakd_clrb_mma_conv(const csakd_conv_args* args, cudaStream_t stream);

/* Elements (of the dtype) of the packed weight of one conv: output channels padded to 16, input channels tiled
 * by 32 bytes and zero-padded, swizzled for ldmatrix; the packed bias has round_up(cout, 16) floats. */
int64_t csakd_clrb_mma_packed_weight_elems(int cin, int cout, int dtype);
int csakd_clrb_mma_packed_bias_elems(int cout);

#define CSAKD_CLRB_MAX_PACK 5
typedef struct {
  const void* weight;   /* (cout, cin, 3, 3) contiguous, of the dtype */
  const void* bias;     /* (cout,) of the dtype */
  int cin, cout;
  void* packed_weight;  /* csakd_clrb_mma_packed_weight_elems(cin, cout, dtype) elements of the dtype */
  float* packed_bias;   /* csakd_clrb_mma_packed_bias_elems(cout) floats */
} csakd_pack_item;

typedef struct {
  csakd_pack_item items[CSAKD_CLRB_MAX_PACK];
  int count;
  int dtype;  /* csakd_dtype */
} csakd_pack_args;

/* Packs the weights and biases of up to five convs in one launch. */
cudaError_t csakd_clrb_mma_pack(const csakd_pack_args* args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* CSAKD_CLRB_KERNELS_H */
