// The CLRB forward and backward from ATen calls over the in-place concatenation buffer; the CPU kernel of the
// op, and the CUDA fallback (the same calls work on CUDA tensors).
#include <torch/library.h>

#include "clrb.h"

namespace csakd {

namespace {

at::Tensor conv3x3(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, int64_t groups) {
  return at::conv2d(input, weight, bias, /*stride=*/1, /*padding=*/1, /*dilation=*/1, groups);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> clrb_forward_aten(const at::Tensor& x_in, at::TensorList weights,
                                                     at::TensorList biases, int64_t groups) {
  const auto s = check_clrb_args(x_in, weights, biases, groups);
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // autograd is the op's own (registered from Python)
  const auto x = x_in.contiguous();
  auto buffer = at::empty({s.batch, s.buffer_channels(), s.height, s.width}, x.options());
  buffer.narrow(1, 0, s.nf).copy_(x);
  for (int64_t k = 0; k < 4; ++k) {
    // conv_k reads the first conv_in(k) channels and its LReLU output fills the next gc channels.
    const auto y = conv3x3(buffer.narrow(1, 0, s.conv_in(k)), weights[k], biases[k], groups);
    auto slot = buffer.narrow(1, s.conv_in(k), s.gc);
    at::leaky_relu_out(slot, y, kSlope);
  }
  const auto y5 = conv3x3(buffer, weights[4], biases[4], groups);
  return {at::add(x, y5, kResScale), buffer};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> clrb_backward_aten(
    const at::Tensor& grad_out_in, const at::Tensor& buffer_in, at::TensorList weights, int64_t groups) {
  const auto s = check_backward_args(grad_out_in, buffer_in, weights, groups);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto grad_out = grad_out_in.contiguous();
  const auto buffer = buffer_in.contiguous();
  std::vector<at::Tensor> grad_w(kNumConvs), grad_b(kNumConvs);

  // Gradient of conv k's input from the gradient of its pre-activation output; stores its weight and bias grads.
  auto conv_backward = [&](const at::Tensor& grad_y, int64_t k) {
    const auto input = buffer.narrow(1, 0, s.conv_in(k));  // conv_in(4) is the whole buffer
    const int64_t bias_size[] = {s.conv_out(k)};
    auto [grad_in, gw, gb] = at::convolution_backward(grad_y, input, weights[k], bias_size, /*stride=*/{1, 1},
                                                      /*padding=*/{1, 1}, /*dilation=*/{1, 1}, /*transposed=*/false,
                                                      /*output_padding=*/{0, 0}, groups, {true, true, true});
    grad_w[k] = gw.contiguous();
    grad_b[k] = gb.contiguous();
    return grad_in;
  };

  // grad_buffer accumulates d loss / d buffer: conv_5 reads the whole buffer, x also feeds the residual.
  auto grad_buffer = conv_backward(grad_out * kResScale, 4).contiguous();
  grad_buffer.narrow(1, 0, s.nf).add_(grad_out);
  for (int64_t k = 3; k >= 0; --k) {
    // x_{k+1} is complete once every later conv has added its share; the saved activation's sign gives the
    // LReLU derivative (the slope is positive, so sign(lrelu(y)) = sign(y)).
    const auto act = buffer.narrow(1, s.conv_in(k), s.gc);
    const auto grad_y = at::leaky_relu_backward(grad_buffer.narrow(1, s.conv_in(k), s.gc), act, kSlope,
                                                /*self_is_result=*/true);
    grad_buffer.narrow(1, 0, s.conv_in(k)).add_(conv_backward(grad_y, k));
  }
  return {grad_buffer.narrow(1, 0, s.nf).contiguous(), grad_w, grad_b};
}

namespace {

std::tuple<at::Tensor, at::Tensor> clrb_forward_cpu(const at::Tensor& x, at::TensorList weights,
                                                    at::TensorList biases, int64_t groups, c10::string_view impl) {
  const std::string name(impl);
  check_impl(name);
  TORCH_CHECK(name == "auto" || name == "aten", "clrb: impl '", name, "' is a CUDA kernel; on CPU use 'auto' or 'aten'");
  return clrb_forward_aten(x, weights, biases, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(csakd, CPU, m) {
  m.impl("clrb_forward", &clrb_forward_cpu);
  m.impl("clrb_backward", &clrb_backward_aten);
}

}  // namespace csakd
