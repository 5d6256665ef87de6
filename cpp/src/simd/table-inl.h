// table-inl.h — assembles this ISA's KernelTable, entry by entry by name, from the
// kernels of the other simd/*-inl.h files. Each per-ISA translation unit
// (kernels_<isa>.cpp) defines GC_ISA_NS (its namespace), GC_ISA_NAME and GC_VBYTES (its
// vector width in bytes) and includes this file; its -m flags come from CMakeLists.txt.
#pragma once

#include "gradchain/kernels.h"

#include "math-inl.h"         // exp/expm1, M<T>, Vec<T>
#include "activations-inl.h"  // the activation functors and their dispatch
#include "epilogues-inl.h"    // the fused forward / backward passes (every norm kind)
#include "gates-inl.h"        // the gated cells' per-step passes (LSTM, GRU)
#include "gemm-inl.h"         // the panel GEMM
#include "reductions-inl.h"   // column sums, sums of squares, gradient edits
#include "tangents-inl.h"     // tangent / cotangent rows (Jacobian products)

namespace gradchain {
namespace GC_ISA_NS {

template <class T>
static constexpr KernelTable<T> build_table() {
  KernelTable<T> t{};
  t.isa = GC_ISA_NAME;
  // forward
  t.fwd_plain = &fwd_plain<T>;
  t.fwd_batchnorm = &fwd_batchnorm<T>;
  t.fwd_layernorm = &fwd_layernorm<T>;
  t.col_sum = &col_sum<T>;
  t.col_moments = &col_moments<T>;
  t.add_bias = &add_bias<T>;
  // backward
  t.bwd_plain = &bwd_plain<T>;
  t.bwd_bn1 = &bwd_bn1<T>;
  t.bwd_bn2 = &bwd_bn2<T>;
  t.bwd_layernorm = &bwd_layernorm<T>;
  t.bwd_plain_health = &bwd_plain_health<T>;
  t.grad_health = &grad_health<T>;
  t.bwd_step_health = &bwd_step_health<T>;
  t.row_sumsq = &row_sumsq<T>;
  t.ln_example_ss = &ln_example_ss<T>;
  // gated cells
  t.lstm_fwd = &lstm_fwd<T>;
  t.lstm_bwd = &lstm_bwd<T>;
  t.gru_fwd = &gru_fwd<T>;
  t.gru_bwd = &gru_bwd<T>;
  // panel GEMM
  t.pack_panels = &pack_panels<T>;
  t.gemm_panels = &gemm_panels<T>;
  t.gemm_panels_ss = &gemm_panels_ss<T>;
  // reductions and gradient edits
  t.sumsq = &sumsq<T>;
  t.sumsq_rows = &sumsq_rows<T>;
  t.maxabs = &maxabs<T>;
  t.scale = &scale<T>;
  t.clamp = &clamp<T>;
  t.act_apply = &act_apply<T>;
  // tangents
  t.tan_fwd = &tan_fwd<T>;
  t.tan_fwd_ln = &tan_fwd_ln<T>;
  t.tan_bwd = &tan_bwd<T>;
  t.tan_bwd_ln = &tan_bwd_ln<T>;
  return t;
}

// Constant-initialised (build_table is constexpr): no guard on the dispatch path.
template <class T>
static const KernelTable<T>* make_table() {
  static const KernelTable<T> table = build_table<T>();
  return &table;
}

const KernelTable<float>* kernels_f32() { return make_table<float>(); }
const KernelTable<double>* kernels_f64() { return make_table<double>(); }

}  // namespace GC_ISA_NS
}  // namespace gradchain
