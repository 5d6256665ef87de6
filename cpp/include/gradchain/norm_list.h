// gradchain/norm_list.h — the one list of the MLP's norm layers (the layer between a
// hidden layer's product and its activation).
//
// Each row: GC_NORM(Enum, "python_name", affine, running_stats)
//   Enum           the NormKind enumerator; its passes are NormLayer<NormKind::Enum>
//                  (cpp/src/norm.cpp);
//   "python_name"  its key in _core.NORM_IDS (the name gradchain's models use);
//   affine         it has a per-feature weight and bias (norms.{l}.weight / .bias);
//   running_stats  it keeps running statistics (norms.{l}.running_mean / running_var).
// The id is the row's position: append new rows at the end.
#pragma once

#define GC_NORM_LIST(GC_NORM)                \
  GC_NORM(None, "none", false, false)        \
  GC_NORM(Batch, "batch", true, true)        \
  GC_NORM(Layer, "layer", true, false)
