// The CLRB op (SPEC §2) shared by the CPU and CUDA implementations.
//
// A CLRB computes x_k = lrelu(conv_k([x, x_1, ..., x_{k-1}])) for k = 1..4 and
// out = x + 0.2 * conv_5([x, x_1, ..., x_4]). Every implementation writes the concatenation in place into
// one (B, nf + 4 gc, H, W) buffer: channels [0, nf) hold x, channels [nf + (k-1) gc, nf + k gc) hold x_k
// after the LReLU. The forward returns that buffer so that the backward can run over it.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

namespace csakd {

constexpr double kSlope = 0.2;     // LReLU negative slope
constexpr double kResScale = 0.2;  // residual scale of conv_5
constexpr int64_t kNumConvs = 5;

struct ClrbShape {
  int64_t batch, nf, gc, height, width, groups;
  int64_t buffer_channels() const { return nf + 4 * gc; }
  int64_t conv_in(int64_t k) const { return nf + k * gc; }        // input channels of conv k (0-based)
  int64_t conv_out(int64_t k) const { return k < 4 ? gc : nf; }   // output channels of conv k
};

// Checks shapes, dtypes and devices of the op's arguments (TORCH_CHECK) and returns the block's sizes.
ClrbShape check_clrb_args(const at::Tensor& x, at::TensorList weights, at::TensorList biases, int64_t groups);
ClrbShape check_backward_args(const at::Tensor& grad_out, const at::Tensor& buffer, at::TensorList weights,
                              int64_t groups);

// Reference-structured implementation from ATen calls; runs on any device (the CPU kernel, and the CUDA
// fallback selected with impl="aten").
std::tuple<at::Tensor, at::Tensor> clrb_forward_aten(const at::Tensor& x, at::TensorList weights,
                                                     at::TensorList biases, int64_t groups);

// Gradients of x, of the five weights and of the five biases from the saved buffer, by ATen
// convolution_backward calls arranged over the buffer (used on every device).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> clrb_backward_aten(
    const at::Tensor& grad_out, const at::Tensor& buffer, at::TensorList weights, int64_t groups);

// impl: "auto" (the custom CUDA kernel that applies, else ATen), "aten" (clrb_forward_aten on any device),
// "mma" / "direct" (force the tensor-core or the direct CUDA kernel: an error where it does not apply).
void check_impl(const std::string& impl);

}  // namespace csakd
