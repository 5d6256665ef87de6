// gradchain/activation.h — the activation enum, its parameters and its rows, all
// generated from the list in gradchain/activation_list.h (nothing to edit here when an
// activation is added).
#pragma once

#include <cstddef>

#include "gradchain/activation_list.h"

namespace gradchain {

enum class Act : int {
#define GC_ACT_ENUM(E, name, selects, n_params) E,
  GC_ACTIVATION_LIST(GC_ACT_ENUM)
#undef GC_ACT_ENUM
  Custom  // a user callback (the drivers run it after an identity pass); always last
};

// p0/p1: leaky_relu (negative_slope), elu (alpha), softplus (beta, threshold),
// hardtanh (min_val, max_val); unused otherwise (the row's n_params says how many).
struct ActParams {
  Act kind = Act::Tanh;
  double p0 = 0.0;
  double p1 = 0.0;
};

// One row of the list, as data (the bindings export the names, ids and flags from it).
struct ActivationRow {
  Act id;
  const char* name;
  bool selects_at_kink;
  int n_params;
};

inline constexpr ActivationRow kActivations[] = {
#define GC_ACT_ROW(E, name, selects, n_params) {Act::E, name, selects, n_params},
    GC_ACTIVATION_LIST(GC_ACT_ROW)
#undef GC_ACT_ROW
};
inline constexpr std::size_t kNumActivations = sizeof(kActivations) / sizeof(kActivations[0]);
static_assert(int(Act::Custom) == int(kNumActivations), "Custom follows the last row");

// The kink rule of the backward passes: true where the gradient is selected (0 wherever
// act' = 0, whatever the upstream value) instead of multiplied. False for Custom.
constexpr bool act_selects(Act a) {
  switch (a) {
#define GC_ACT_SELECTS(E, name, selects, n_params) \
  case Act::E:                                     \
    return selects;
    GC_ACTIVATION_LIST(GC_ACT_SELECTS)
#undef GC_ACT_SELECTS
    default:
      return false;
  }
}

}  // namespace gradchain
