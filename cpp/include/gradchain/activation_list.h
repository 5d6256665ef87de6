// gradchain/activation_list.h — the one list of the core's built-in activations.
//
// Each row: GC_ACTIVATION(Enum, "python_name", selects_at_kink, n_params)
//   Enum             the Act enumerator; the kernels call the functor Act<Enum><T>
//                    (cpp/src/simd/activations-inl.h), so ActMish for Mish;
//   "python_name"    its key in _core.ACTIVATION_IDS (the name gradchain.activations uses);
//   selects_at_kink  the backward pass selects (dL/dz = 0 wherever act' = 0, even for an
//                    Inf/NaN upstream gradient: PyTorch's threshold_backward /
//                    hardtanh_backward) instead of multiplying;
//   n_params         how many of ActParams' p0, p1 it reads (in gradchain.activations'
//                    parameter order).
// The id is the row's position: append new rows at the end (Custom, the callback slot,
// always comes after the last row). Everything else (the enum, the kernels' dispatch, the
// ids and flags exported to Python, the kink rule of both chains) is generated from here.
//
// Adding an activation: one row here and one functor in cpp/src/simd/activations-inl.h.
#pragma once

#define GC_ACTIVATION_LIST(GC_ACTIVATION)              \
  GC_ACTIVATION(Identity, "identity", false, 0)        \
  GC_ACTIVATION(Sigmoid, "sigmoid", false, 0)          \
  GC_ACTIVATION(Tanh, "tanh", false, 0)                \
  GC_ACTIVATION(Relu, "relu", true, 0)                 \
  GC_ACTIVATION(LeakyRelu, "leaky_relu", false, 1)     \
  GC_ACTIVATION(Elu, "elu", false, 1)                  \
  GC_ACTIVATION(Selu, "selu", false, 0)                \
  GC_ACTIVATION(Gelu, "gelu", false, 0)                \
  GC_ACTIVATION(GeluTanh, "gelu_tanh", false, 0)       \
  GC_ACTIVATION(Softplus, "softplus", false, 2)        \
  GC_ACTIVATION(Silu, "silu", false, 0)                \
  GC_ACTIVATION(Hardtanh, "hardtanh", true, 2)        \
  GC_ACTIVATION(Mish, "mish", false, 0)
