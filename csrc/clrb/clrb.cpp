// Schema of the csakd CLRB ops and their argument checks (the Python module that loads them: module.cpp).
#include <torch/library.h>

#include "clrb.h"

namespace csakd {

namespace {

void check_weights(const ClrbShape& s, at::TensorList weights, const at::Tensor& like) {
  TORCH_CHECK(weights.size() == kNumConvs, "clrb: expected 5 weights, got ", weights.size());
  for (int64_t k = 0; k < kNumConvs; ++k) {
    const auto& w = weights[k];
    TORCH_CHECK(w.dim() == 4 && w.size(0) == s.conv_out(k) && w.size(1) == s.conv_in(k) / s.groups &&
                    w.size(2) == 3 && w.size(3) == 3,
                "clrb: expected weights[", k, "] of shape (", s.conv_out(k), ", ", s.conv_in(k) / s.groups,
                ", 3, 3), got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == like.scalar_type() && w.device() == like.device(), "clrb: expected weights[",
                k, "] of dtype ", like.scalar_type(), " on ", like.device(), ", got ", w.scalar_type(), " on ",
                w.device());
  }
}

}  // namespace

ClrbShape check_clrb_args(const at::Tensor& x, at::TensorList weights, at::TensorList biases, int64_t groups) {
  TORCH_CHECK(x.dim() == 4, "clrb: expected x of shape (B, nf, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "clrb: expected a floating-point x, got ", x.scalar_type());
  TORCH_CHECK(weights.size() == kNumConvs && biases.size() == kNumConvs,
              "clrb: expected 5 weights and 5 biases, got ", weights.size(), " and ", biases.size());
  TORCH_CHECK(groups >= 1, "clrb: expected groups >= 1, got ", groups);
  ClrbShape s{x.size(0), x.size(1), weights[0].size(0), x.size(2), x.size(3), groups};
  TORCH_CHECK(s.nf % groups == 0 && s.gc % groups == 0, "clrb: expected groups dividing nf=", s.nf, " and gc=",
              s.gc, ", got ", groups);
  check_weights(s, weights, x);
  for (int64_t k = 0; k < kNumConvs; ++k) {
    const auto& b = biases[k];
    TORCH_CHECK(b.dim() == 1 && b.size(0) == s.conv_out(k), "clrb: expected biases[", k, "] of shape (",
                s.conv_out(k), ",), got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == x.scalar_type() && b.device() == x.device(), "clrb: expected biases[", k,
                "] of dtype ", x.scalar_type(), " on ", x.device(), ", got ", b.scalar_type(), " on ", b.device());
  }
  return s;
}

ClrbShape check_backward_args(const at::Tensor& grad_out, const at::Tensor& buffer, at::TensorList weights,
                              int64_t groups) {
  TORCH_CHECK(grad_out.dim() == 4 && buffer.dim() == 4, "clrb_backward: expected 4-D grad_out and buffer, got ",
              grad_out.sizes(), " and ", buffer.sizes());
  TORCH_CHECK(weights.size() == kNumConvs, "clrb_backward: expected 5 weights, got ", weights.size());
  ClrbShape s{grad_out.size(0), grad_out.size(1), weights[0].size(0), grad_out.size(2), grad_out.size(3), groups};
  TORCH_CHECK(buffer.size(0) == s.batch && buffer.size(1) == s.buffer_channels() && buffer.size(2) == s.height &&
                  buffer.size(3) == s.width,
              "clrb_backward: expected buffer of shape (", s.batch, ", ", s.buffer_channels(), ", ", s.height, ", ",
              s.width, "), got ", buffer.sizes());
  TORCH_CHECK(buffer.scalar_type() == grad_out.scalar_type() && buffer.device() == grad_out.device(),
              "clrb_backward: expected buffer of dtype ", grad_out.scalar_type(), " on ", grad_out.device(),
              ", got ", buffer.scalar_type(), " on ", buffer.device());
  check_weights(s, weights, grad_out);
  return s;
}

void check_impl(const std::string& impl) {
  TORCH_CHECK(impl == "auto" || impl == "aten" || impl == "mma" || impl == "direct",
              "clrb: expected impl 'auto', 'aten', 'mma' or 'direct', got '", impl, "'");
}

TORCH_LIBRARY(csakd, m) {
  m.def("clrb_forward(Tensor x, Tensor[] weights, Tensor[] biases, int groups, str impl) -> "
        "(Tensor out, Tensor buffer)");
  m.def("clrb_backward(Tensor grad_out, Tensor buffer, Tensor[] weights, int groups) -> "
        "(Tensor grad_x, Tensor[] grad_weights, Tensor[] grad_biases)");
}

}  // namespace csakd
