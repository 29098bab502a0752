// fp32 CPU matrix products through the oneDNN that LibTorch carries.
//
// ATen sends fp32 matmuls to MKL, which runs its AVX2 kernels on AMD CPUs even where they have
// AVX-512; oneDNN picks its kernels by instruction set and runs AVX-512 there. On the 2-core AMD
// EPYC (Zen 5) development machine a 1024³ fp32 GEMM runs at ~430 GFLOP/s through oneDNN against
// ~205 through MKL (`moetron bench model` prints both). The products below take oneDNN for fp32
// CPU tensors when this LibTorch exports its oneDNN matmul entry point and MOETRON_CPU_GEMM is not
// "aten"; otherwise, and for every other dtype or device, they are the ATen ops. Only the
// summation order differs between the two (fp32 accumulation in both).
#pragma once

#include <torch/types.h>

#include <string>

namespace moetron::ops::cpu {

// Whether fp32 CPU products go to oneDNN (decided once per process).
bool onednn_gemm_enabled();
// "onednn" or "aten (REASON)", for logs and benchmarks.
std::string gemm_backend();

// c = alpha · a · b, or c += alpha · a · b with accumulate. Matrices [M, K] · [K, N] -> [M, N], or
// batches [B, M, K] · [B, K, N] -> [B, M, N]; a and b may be row-major or transposed views; c is
// written in place (any strides: a contiguous temporary is used where oneDNN needs one). Not
// recorded by autograd: call it in no-grad code or inside an autograd function.
void gemm_out(const torch::Tensor& c, const torch::Tensor& a, const torch::Tensor& b,
              bool accumulate = false, float alpha = 1.0f);
// alpha · a · b into a new tensor.
torch::Tensor gemm(const torch::Tensor& a, const torch::Tensor& b, float alpha = 1.0f);

// y = x Wᵀ (a bias-free nn.Linear), differentiable w.r.t. x and W. fp32 CPU inputs outside CPU
// autocast take oneDNN for the forward and both gradients; anything else is
// torch::nn::functional::linear. x [..., I], W [O, I] -> y [..., O].
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight);

}  // namespace moetron::ops::cpu
