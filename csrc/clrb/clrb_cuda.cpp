// CUDA forward of the CLRB op: the same in-place buffer as the ATen path, filled by the custom kernels of
// clrb_mma.cu (groups = 1 on tensor cores: bf16/fp16, and fp32 as TF32 where cuDNN may use TF32 too) and
// clrb_direct.cu (grouped convs with few channels per group, any float dtype). Whatever they do not cover runs clrb_forward_aten; impl="aten" forces that path so
// that a misbehaving kernel can be bypassed and compared against. The backward is clrb_backward_aten (cuDNN).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "clrb.h"
#include "clrb_kernels.h"

namespace csakd {

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CSAKD_FLOAT32;
    case at::kBFloat16: return CSAKD_BFLOAT16;
    case at::kHalf: return CSAKD_FLOAT16;
    default: return -1;
  }
}

// Largest input channels per group the direct kernel is chosen for by "auto" (g = 43 CLRB: 6).
constexpr int64_t kDirectMaxChannelsPerGroup = 16;

int compute_capability_major(const at::Tensor& x) {
  int major = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index()) == cudaSuccess,
              "clrb: cannot query the compute capability of ", x.device());
  return major;
}

// fp32 runs the tensor-core kernel in TF32: chosen by "auto" only where torch.backends.cudnn.allow_tf32 lets
// eager convolutions do the same.
bool mma_applies(const ClrbShape& s, const at::Tensor& x, bool forced) {
  const int code = dtype_code(x.scalar_type());
  const bool dtype_ok = code == CSAKD_BFLOAT16 || code == CSAKD_FLOAT16 ||
                        (code == CSAKD_FLOAT32 && (forced || at::globalContext().allowTF32CuDNN()));
  return s.groups == 1 && dtype_ok && compute_capability_major(x) >= 8;
}

bool direct_applies(const at::Tensor& x) { return dtype_code(x.scalar_type()) >= 0; }

// "mma", "direct" or "aten": the path that runs for these arguments.
std::string choose_path(const ClrbShape& s, const at::Tensor& x, const std::string& impl) {
  if (impl == "mma") {
    TORCH_CHECK(mma_applies(s, x, true), "clrb: impl 'mma' needs groups=1, float32 (run as TF32), bfloat16 or "
                "float16 and a GPU of compute capability >= 8.0; got groups=", s.groups, ", ", x.scalar_type());
    return impl;
  }
  if (impl == "direct") {
    TORCH_CHECK(direct_applies(x), "clrb: impl 'direct' needs float32, bfloat16 or float16, got ", x.scalar_type());
    return impl;
  }
  if (impl == "auto") {
    if (mma_applies(s, x, false)) return "mma";
    if (s.groups > 1 && s.buffer_channels() / s.groups <= kDirectMaxChannelsPerGroup && direct_applies(x)) {
      return "direct";
    }
  }
  return "aten";
}

void check_launch(cudaError_t err, const char* kernel, int64_t conv) {
  TORCH_CHECK(err == cudaSuccess, "clrb: CUDA kernel ", kernel, " (conv ", conv + 1, ") failed: ",
              cudaGetErrorString(err), "; impl='aten' bypasses the custom kernels");
}

std::tuple<at::Tensor, at::Tensor> forward_kernels(const at::Tensor& x_in, at::TensorList weights,
                                                   at::TensorList biases, const ClrbShape& s, bool mma) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // autograd is the op's own (registered from Python)
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x_in.device().index()).stream();
  const auto x = x_in.contiguous();
  const int64_t plane = s.height * s.width, elem = x.element_size();
  auto buffer = at::empty({s.batch, s.buffer_channels(), s.height, s.width}, x.options());
  auto out = at::empty_like(x);
  if (x.numel() == 0) return {out, buffer};
  buffer.narrow(1, 0, s.nf).copy_(x);

  std::vector<at::Tensor> w(kNumConvs), b(kNumConvs);
  for (int64_t k = 0; k < kNumConvs; ++k) {
    w[k] = weights[k].contiguous();
    b[k] = biases[k].contiguous();
  }
  if (mma) {  // the packed weights replace w and b: fp32 bias, channels padded, tiled and swizzled
    csakd_pack_args pack{};
    pack.count = kNumConvs;
    pack.dtype = dtype_code(x.scalar_type());
    for (int64_t k = 0; k < kNumConvs; ++k) {
      const int cin = static_cast<int>(s.conv_in(k)), cout = static_cast<int>(s.conv_out(k));
      auto packed_w = at::empty({csakd_clrb_mma_packed_weight_elems(cin, cout, pack.dtype)}, x.options());
      auto packed_b = at::empty({csakd_clrb_mma_packed_bias_elems(cout)}, x.options().dtype(at::kFloat));
      pack.items[k] = {w[k].data_ptr(), b[k].data_ptr(), cin, cout, packed_w.data_ptr(),
                       packed_b.data_ptr<float>()};
      w[k] = packed_w;
      b[k] = packed_b;
    }
    check_launch(csakd_clrb_mma_pack(&pack, stream), "csakd_clrb_mma_pack", 0);
  }

  const int64_t buffer_stride = s.buffer_channels() * plane;
  for (int64_t k = 0; k < kNumConvs; ++k) {
    const bool last = k == kNumConvs - 1;
    csakd_conv_args args{};
    args.input = buffer.data_ptr();
    args.input_batch_stride = buffer_stride;
    args.batch = static_cast<int>(s.batch);
    args.height = static_cast<int>(s.height);
    args.width = static_cast<int>(s.width);
    args.cin = static_cast<int>(s.conv_in(k));
    args.cout = static_cast<int>(s.conv_out(k));
    args.groups = static_cast<int>(s.groups);
    args.weight = w[k].data_ptr();
    args.bias = b[k].data_ptr();
    // conv_1..4 fill the buffer slot right after their input channels; conv_5 writes out = x + 0.2 y.
    args.output = last ? out.data_ptr() : static_cast<char*>(buffer.data_ptr()) + s.conv_in(k) * plane * elem;
    args.output_batch_stride = last ? s.nf * plane : buffer_stride;
    args.residual = last ? x.data_ptr() : nullptr;
    args.residual_batch_stride = last ? s.nf * plane : 0;
    args.epilogue = last ? CSAKD_EPILOGUE_RESIDUAL : CSAKD_EPILOGUE_LRELU;
    args.dtype = dtype_code(x.scalar_type());
    if (mma) {
      check_launch(csakd_clrb_mma_conv(&args, stream), "csakd_clrb_mma_conv", k);
    } else {
      check_launch(csakd_clrb_direct_conv(&args, stream), "csakd_clrb_direct_conv", k);
    }
  }
  return {out, buffer};
}

std::tuple<at::Tensor, at::Tensor> clrb_forward_cuda(const at::Tensor& x, at::TensorList weights,
                                                     at::TensorList biases, int64_t groups, c10::string_view impl) {
  const std::string name(impl);
  check_impl(name);
  const auto s = check_clrb_args(x, weights, biases, groups);
  const auto path = choose_path(s, x, name);
  if (path == "aten") return clrb_forward_aten(x, weights, biases, groups);
  TORCH_CHECK(s.batch <= 65535 && s.groups <= 65535, "clrb: the CUDA kernels take batch and groups <= 65535, got ",
              s.batch, " and ", s.groups, "; use impl='aten'");
  return forward_kernels(x, weights, biases, s, path == "mma");
}

}  // namespace

TORCH_LIBRARY_IMPL(csakd, CUDA, m) {
  m.impl("clrb_forward", &clrb_forward_cuda);
  m.impl("clrb_backward", &clrb_backward_aten);
}

}  // namespace csakd
