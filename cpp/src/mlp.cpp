// mlp.cpp — the MLP chain driver: planned workspace, forward and backward over
// the layer pairs, per-layer gradient norms computed inside the passes.
//
// Parallel structure: one OpenMP region for the whole forward (and one for the
// whole backward); inside it every layer runs `omp for` loops over fixed
// blocks (GEMM blocks from gemm_split, row blocks of kRowBlock rows), with
// `omp single` steps for the small column reductions. OpenBLAS runs
// single-threaded inside each block, so nothing is oversubscribed and no
// number depends on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "gradchain/mlp.h"

#include "gradchain/blas.h"
#include "gradchain/dispatch.h"
#include "gradchain/governor.h"
#include "gradchain/norm.h"
#include "gradchain/parallel.h"
#include "gemm_block.h"

namespace gradchain {

using detail::gemm_block;


// ---------------------------------------------------------------------------
// Construction: validate, lay out the flat buffers and their named views.
// ---------------------------------------------------------------------------
namespace {
template <class T>
const char* dtype_name() { return sizeof(T) == 4 ? "float32" : "float64"; }

std::string sizes_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (s.size() > 8 && i == 3) {  // long chains: the first three, "...", the last two
      out += "..., ";
      i = s.size() - 3;
      continue;
    }
    out += (i ? ", " : "") + std::to_string(s[i]);
  }
  return out + "]";
}
}  // namespace

template <class T>
std::string MlpChain<T>::describe() const {
  return "an MLP with sizes " + sizes_str(cfg_.sizes) + " (" + dtype_name<T>() + ")";
}

template <class T>
MlpChain<T>::MlpChain(MlpConfig cfg)
    : ChainBase<T>([this] { return describe(); }, true), cfg_(std::move(cfg)) {
  const auto& s = cfg_.sizes;
  if (s.size() < 2) throw std::invalid_argument("sizes must have at least 2 entries (in, out)");
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] < 1)
      throw std::invalid_argument("sizes[" + std::to_string(i) + "] must be >= 1, got " +
                                  std::to_string(s[i]));
    if (s[i] > kBlasIntMax)  // a GEMM dimension and leading dimension of the layer products
      throw std::invalid_argument("sizes[" + std::to_string(i) + "]=" + std::to_string(s[i]) +
                                  " exceeds the BLAS's 32-bit limit (2^31-1)");
  }
  L_ = int64_t(s.size()) - 2;
  if (int64_t(cfg_.residual.size()) != L_)
    throw std::invalid_argument("residual must have one flag per hidden layer");
  for (int64_t l = 0; l < L_; ++l)
    if (cfg_.residual[size_t(l)] && s[size_t(l)] != s[size_t(l) + 1])
      throw std::invalid_argument("residual on hidden layer " + std::to_string(l) +
                                  " whose widths differ");
  if (!(cfg_.eps > 0)) throw std::invalid_argument("eps must be > 0");

  auto add = [this](std::string name, std::vector<int64_t> shape, int kind) {
    return this->add_tensor(std::move(name), std::move(shape), kind);
  };
  layers_.resize(size_t(L_ + 1));
  for (int64_t l = 0; l <= L_; ++l) {
    Layer& ly = layers_[size_t(l)];
    ly.in = s[size_t(l)];
    ly.out = s[size_t(l) + 1];
    const std::string p = "layers." + std::to_string(l);
    ly.w = add(p + ".weight", {ly.out, ly.in}, 0);
    ly.b = cfg_.bias ? add(p + ".bias", {ly.out}, 0) : -1;
    ly.gamma = ly.beta = ly.rmean = ly.rvar = -1;
  }
  // the norm layers' tensors: all affine parameters, then all running statistics
  if (norm_affine(cfg_.norm)) {
    for (int64_t l = 0; l < L_; ++l) {
      Layer& ly = layers_[size_t(l)];
      const std::string p = "norms." + std::to_string(l);
      ly.gamma = add(p + ".weight", {ly.out}, 0);
      ly.beta = add(p + ".bias", {ly.out}, 0);
    }
  }
  if (norm_running_stats(cfg_.norm)) {
    for (int64_t l = 0; l < L_; ++l) {
      Layer& ly = layers_[size_t(l)];
      const std::string p = "norms." + std::to_string(l);
      ly.rmean = add(p + ".running_mean", {ly.out}, 1);
      ly.rvar = add(p + ".running_var", {ly.out}, 1);
    }
  }
  this->allocate_tensors("the parameters, gradients and buffers of");
  maxw_ = 0;
  layer_macs_ = 0.0;
  int64_t max_chunks = 1;
  for (auto& ly : layers_) {
    layer_macs_ += double(ly.in) * double(ly.out) / double(layers_.size());
    maxw_ = ly.in > maxw_ ? ly.in : maxw_;
    maxw_ = ly.out > maxw_ ? ly.out : maxw_;
    const int64_t rpc = kNormChunk / ly.in > 0 ? kNormChunk / ly.in : 1;
    const int64_t nc = ceil_div(ly.out, rpc);
    max_chunks = nc > max_chunks ? nc : max_chunks;
  }
  try {
    chunk_ss_.assign(size_t(max_chunks > kGemmBlocks ? max_chunks : kGemmBlocks), 0.0);
    if (norm_running_stats(cfg_.norm)) {
      bmean_.assign(size_t(L_ * maxw_), 0.0);
      bvar_.assign(size_t(L_ * maxw_), 0.0);
    }
  } catch (const std::bad_alloc&) {
    throw AllocError(alloc_message("the batch statistics of " + describe(),
                                   double(2 * L_ * maxw_) * double(sizeof(double))));
  }
  // each hidden layer's norm: views of its tensors, initial values
  norms_.resize(size_t(L_));
  for (int64_t l = 0; l < L_; ++l) {
  const Layer& ly = layers_[size_t(l)];
    NormLayerView<T>& nv = norms_[size_t(l)];
    nv.n = ly.out;
    if (ly.gamma >= 0) {
      nv.gamma = params_.data() + ly.gamma;
      nv.dgamma = grads_.data() + ly.gamma;
      nv.beta = params_.data() + ly.beta;
      nv.dbeta = grads_.data() + ly.beta;
    }
    if (ly.rmean >= 0) {
      nv.running_mean = buffers_.data() + ly.rmean;
      nv.running_var = buffers_.data() + ly.rvar;
      nv.batch_mean = bmean_.data() + l * maxw_;
      nv.batch_var = bvar_.data() + l * maxw_;
    }
    norm_reset(cfg_.norm, nv);
  }
}

// ---------------------------------------------------------------------------
// Workspace: planned once per batch size; nothing is allocated in the chain loop.
// ---------------------------------------------------------------------------
template <class T>
int64_t MlpChain<T>::workspace_values(int64_t B) const {
  int64_t total = B * cfg_.sizes[0];
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t h = layers_[size_t(l)].out;
    total += B * h * 2 + norm_workspace_values(cfg_.norm, B, h);  // a, d; the norm's
  }
  // G0, G1, DZ; k/m1/m2 scratch; the health report's column maxima of |act'|
  return total + 3 * B * maxw_ + 3 * maxw_ + L_ * ceil_div(B, kRowBlock) * maxw_;
}

// The doubles plan(B) allocates besides ws_: part_, blk_, fchk_ and colsum_.
namespace {
inline int64_t mlp_double_values(int64_t B, int64_t L, int64_t maxw) {
  const int64_t nrb = ceil_div(B, kRowBlock);
  // part_, blk_, fchk_, colsum_; hcnt_, fabs_, pe_ (forensics)
  return 3 * nrb * maxw + nrb + (L + 1) * nrb + 2 * maxw + 3 * (L + 1) * nrb + L * nrb +
         4 * (L + 1) * B;
}
constexpr int64_t kHugeBytes = int64_t(1) << 60;  // beyond any memory; sizes above overflow
}  // namespace

// Whether a workspace for B rows would pass kHugeBytes (its size in int64 could overflow).
template <class T>
bool MlpChain<T>::workspace_huge(int64_t B) const {
  double per_row = double(cfg_.sizes[0]) + 3.0 * double(maxw_) + 3.0 * double(maxw_) / kRowBlock;
  for (int64_t l = 0; l < L_; ++l) per_row += 3.0 * double(layers_[size_t(l)].out) + 2.0;
  per_row += 8.0 * double(L_ + 1) + double(L_) * double(maxw_) / kRowBlock;  // forensics
  return double(B) * per_row * 8.0 + 16.0 * double(maxw_) > double(kHugeBytes);
}

template <class T>
int64_t MlpChain<T>::held_workspace_bytes() const {
  return ws_.size() * int64_t(sizeof(T)) + part_.size() * int64_t(sizeof(double)) +
         int64_t(blk_.size() + fchk_.size() + colsum_[0].size() + colsum_[1].size() +
                 hcnt_.size() + fabs_.size() + pe_.size()) *
             int64_t(sizeof(double));
}

template <class T>
int MlpChain<T>::work_cap(int64_t B) const {
  if (work_threads(B * maxw_ * 4) == 1) return 1;
  return mlp_work_threads(2.0 * double(B) * layer_macs_);
}

template <class T>
int64_t MlpChain<T>::pass_bytes(int64_t B) const {
  if (B < 1 || B > kBlasIntMax) return 0;  // refused by forward before anything is allocated
  if (workspace_huge(B)) return kHugeBytes;
  const int64_t maxk = B > maxw_ ? B : maxw_;
  int64_t need = 0;
  if (B != B_) {
    const int64_t fresh = workspace_values(B) * int64_t(sizeof(T)) +
                          mlp_double_values(B, L_, maxw_) * int64_t(sizeof(double));
    const int64_t held = held_workspace_bytes();
    need = fresh > held ? fresh - held : 0;
  }
  const int64_t slot = B == B_ ? pack_slot_ : detail::pack_slot<T>(maxk, maxw_);
  const int cap = work_cap(B), setting = get_num_threads();
  return need + detail::pack_scratch_bytes(pack_, slot, cap < setting ? cap : setting);
}

template <class T>
void MlpChain<T>::plan(int64_t B) {
  if (B == B_) return;
  if (B > kBlasIntMax)  // the weight gradients' GEMMs take B as their inner dimension
    throw std::invalid_argument("batch size " + std::to_string(B) +
                                " exceeds the BLAS's 32-bit limit (2^31-1)");
  if (workspace_huge(B))
    throw AllocError("gradchain: cannot allocate the workspace for a batch of " +
                     std::to_string(B) + " rows of " + describe() + ": more than 2^60 bytes");
  has_forward_ = false;
  B_ = 0;
  // the old workspace goes first: the peak is the new one, not old + new
  ws_ = Buffer<T>();
  part_ = Buffer<double>();
  const int64_t total = workspace_values(B);
  // panel GEMM slots: inner dimension in/out (layer products) or B (weight gradients),
  // packed width at most maxw
  pack_slot_ = detail::pack_slot<T>(B > maxw_ ? B : maxw_, maxw_);
  try {
    ws_ = Buffer<T>(total);
    nrb_ = ceil_div(B, kRowBlock);
    part_ = Buffer<double>(3 * nrb_ * maxw_);
    blk_.assign(size_t(nrb_), 0.0);
    fchk_.assign(size_t((L_ + 1) * nrb_), 0.0);
    for (auto& c : colsum_) c.assign(size_t(maxw_), 0.0);
    hcnt_.assign(size_t(3 * (L_ + 1) * nrb_), 0.0);
    fabs_.assign(size_t(L_ * nrb_), 0.0);
    pe_.assign(size_t(4 * (L_ + 1) * B), 0.0);
  } catch (const std::bad_alloc&) {
    ws_ = Buffer<T>();
    part_ = Buffer<double>();
    throw AllocError(alloc_message(
        "the workspace for a batch of " + std::to_string(B) + " rows of " + describe(),
        double(total) * double(sizeof(T)) +
            double(mlp_double_values(B, L_, maxw_)) * double(sizeof(double))));
  }
  WorkspaceCarver<T> ws(ws_.data());
  A_.assign(size_t(L_ + 1), nullptr);
  D_.assign(size_t(L_), nullptr);
  A_[0] = ws.take(B * cfg_.sizes[0]);
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t h = layers_[size_t(l)].out;
    A_[size_t(l) + 1] = ws.take(B * h);
    D_[size_t(l)] = ws.take(B * h);
    norm_carve(cfg_.norm, ws, B, norms_[size_t(l)]);
  }
  G0_ = ws.take(B * maxw_);
  G1_ = ws.take(B * maxw_);
  DZ_ = ws.take(B * maxw_);
  scratch_ = ws.take(3 * maxw_);
  HD_ = ws.take(L_ * nrb_ * maxw_);
  B_ = B;
}

template <class T>
RowPass<T> MlpChain<T>::row_pass() const {
  RowPass<T> rp;
  rp.B = B_;
  rp.nrb = nrb_;
  rp.maxw = maxw_;
  rp.part = part_.data();
  rp.blk = const_cast<double*>(blk_.data());
  rp.colsum0 = const_cast<double*>(colsum_[0].data());
  rp.colsum1 = const_cast<double*>(colsum_[1].data());
  rp.coef = scratch_;
  return rp;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
// Hidden layer l (0-based): a_{l+1} = [a_l + alpha *] act(Norm(a_l W^T + b)).
// Called by every thread of the region. With skip_act the activation is the
// identity and the residual is left out (the custom-activation path finishes it).
template <class T>
void MlpChain<T>::layer_forward(int64_t l, bool skip_act) {
  const Layer& ly = layers_[size_t(l)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const T* in = A_[size_t(l)];
  T* out = A_[size_t(l) + 1];
  T* d = D_[size_t(l)];
  const T* W = params_.data() + ly.w;
  const T* b = ly.b >= 0 ? params_.data() + ly.b : nullptr;

  const GemmSplit gs = gemm_split(B, n, k, detail::takes_panel<T>(k, n));
#pragma omp for schedule(static)  // z = a_l W^T, over fixed GEMM blocks
  for (int64_t blk = 0; blk < gs.count; ++blk)
    if (!stopping())  // cancelled: skip the rest (the pass will be thrown away)
      gemm_block(gs, blk, false, true, B, n, k, in, k, W, k, T(0), out, n,
                 packs());

  FwdArgs<T> args;
  args.act = cfg_.act;
  if (skip_act) args.act.kind = Act::Identity;
  args.resid = (!skip_act && cfg_.residual[size_t(l)]) ? in : nullptr;
  args.alpha = T(cfg_.residual_scale);
  args.eps = T(cfg_.eps);
  // per row block: sum |a_{l+1}| (the health report's mean |activation|)
  args.abs_sum = forensics ? fabs_.data() + l * nrb_ : nullptr;
  // the norm layer's fused pass: [resid + alpha *] act(Norm(z + b)), its derivative and
  // the per-block non-finite checks of a_{l+1}
  norm_forward(cfg_.norm, norms_[size_t(l)], args, b, training, cfg_.eps, out, d, row_pass(),
               fchk_.data() + l * nrb_);
}

// The custom activation's tail (serial, outside any OpenMP region: it calls back into Python).
template <class T>
void MlpChain<T>::layer_forward_custom_tail(int64_t l) {
  const Layer& ly = layers_[size_t(l)];
  const int64_t B = B_, n = ly.out;
  T* out = A_[size_t(l) + 1];
  custom_(out, out, D_[size_t(l)], B, n);
  bool bad = false;
  if (cfg_.residual[size_t(l)]) {
    const T* in = A_[size_t(l)];
    const T alpha = T(cfg_.residual_scale);
    for (int64_t i = 0; i < B * n; ++i) out[i] = in[i] + alpha * out[i];
  }
  for (int64_t i = 0; i < B * n; ++i) bad = bad || !std::isfinite(out[i]);
  for (int64_t rb = 0; rb < nrb_; ++rb) {
    fchk_[size_t(l * nrb_ + rb)] = 0.0;
    double s = 0.0;  // sum |a| per row block, as the fused pass takes it
    for (int64_t i = rb * kRowBlock * n; i < (rb * kRowBlock + rows_in_block(rb, B)) * n; ++i)
      s += double(std::abs(out[i]));
    fabs_[size_t(l * nrb_ + rb)] = s;
  }
  fchk_[size_t(l * nrb_)] = bad ? std::numeric_limits<double>::quiet_NaN() : 0.0;
}

template <class T>
void MlpChain<T>::output_forward(T* y) {
  const auto& K = kernels<T>();
  const Layer& ly = layers_[size_t(L_)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const T* W = params_.data() + ly.w;
  const T* b = ly.b >= 0 ? params_.data() + ly.b : nullptr;
  const GemmSplit gs = gemm_split(B, n, k, detail::takes_panel<T>(k, n));
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < gs.count; ++blk)
    if (!stopping())
      gemm_block(gs, blk, false, true, B, n, k, A_[size_t(L_)], k, W, k, T(0), y, n,
                 packs());
  double* chk = fchk_.data() + L_ * nrb_;
#pragma omp for schedule(static)
  for (int64_t rb = 0; rb < nrb_; ++rb)
    chk[rb] = K.add_bias(y + rb * kRowBlock * n, b, rows_in_block(rb, B), n);
}

template <class T>
void MlpChain<T>::forward(const T* x, int64_t B, T* y) {
  std::lock_guard<std::mutex> lock(mu_);
  if (B < 1) throw std::invalid_argument("batch size must be >= 1");
  norm_check_batch(cfg_.norm, training, B);
  if (cfg_.act.kind == Act::Custom && !custom_)
    throw std::logic_error("custom activation has no callable");
  plan(B);
  has_forward_ = false;
  std::memcpy(A_[0], x, size_t(B * cfg_.sizes[0]) * sizeof(T));
  fwd_nonfinite_ = -1;
  fwd_stage_ = NonfiniteStage::None;
  const bool custom = cfg_.act.kind == Act::Custom;
  const int cap = work_cap(B);
  // the custom path runs Python between its regions: they do not teach the governor
  GovernedRegion region(custom ? 1 : cap);
  const int nt = custom ? pass_threads(cap) : region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  stop_ = cancel_flag();
  if (custom) {
    for (int64_t l = 0; l < L_; ++l) {
#pragma omp parallel num_threads(nt)
      layer_forward(l, true);
      if (stopping()) throw Cancelled();
      layer_forward_custom_tail(l);  // may throw: running statistics are not yet touched
    }
#pragma omp parallel num_threads(nt)
    output_forward(y);
  } else {
    // decisions per step (step_at): step l < L is hidden layer l, step L the output layer
    std::vector<unsigned char> at(size_t(L_ + 2), 0);
    at[0] = stopping() ? 1 : 0;
    // Steps s0.. by every thread of a region: cancelled or bailed out, every thread leaves
    // at the same step.
    auto steps = [&](int64_t s0, GovernedRegion* rg) {
      bool stopped = false;
      for (int64_t l = s0; l < L_ && !stopped; ++l)
        if (!(stopped = step_at(at.data(), l, stop_, rg) != 0)) layer_forward(l, false);
      if (!stopped && !step_at(at.data(), L_, stop_, rg)) output_forward(y);
    };
#pragma omp parallel num_threads(nt)  // all layers inside one region; threads step through them together
    {
      region.enter();
      steps(0, &region);
      region.leave();
    }
    const int64_t s = bailed_at(at.data(), L_ + 1);
    region.done(s >= 0);
    if (s >= 0) {  // starved: the rest on this thread alone
      std::fill(at.begin() + s, at.end(), 0);
      at[size_t(s)] = stopping() ? 1 : 0;
#pragma omp parallel num_threads(1)
      steps(s, nullptr);
    }
  }
  if (stopping()) throw Cancelled();  // before anything is committed
  for (int64_t l = 0; l <= L_ && fwd_nonfinite_ < 0; ++l)  // first a_l (l = L+1: y) with NaN/Inf
    for (int64_t rb = 0; rb < nrb_; ++rb)
      if (std::isnan(fchk_[size_t(l * nrb_ + rb)])) {
        fwd_nonfinite_ = int(l + 1);
        break;
      }
  if (fwd_nonfinite_ > 0 && forensics) fwd_stage_ = diagnose_forward(fwd_nonfinite_ - 1);
  // Commit the running statistics only now that the whole pass succeeded.
  for (int64_t l = 0; l < L_; ++l) {
  const Layer& ly = layers_[size_t(l)];
    norm_commit(cfg_.norm, norms_[size_t(l)], ly.b >= 0 ? params_.data() + ly.b : nullptr,
                training, B, cfg_.momentum);
  }
  has_forward_ = true;
  fwd_B_ = B;
  ++forwards_;
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------
// Hidden layer l: g = dL/da_{l+1} (B, n) in, dL/da_l (B, k) out (in g_other, or
// added into g in place when the layer is residual: dL/da_l = g + dz W).
template <class T>
void MlpChain<T>::layer_backward(int64_t l, bool accumulate, T*& g, T*& g_other,
                                 MlpReport& rep) {
  const Layer& ly = layers_[size_t(l)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const bool res = cfg_.residual[size_t(l)] != 0;
  const T scale = res ? T(cfg_.residual_scale) : T(1);
  T* dz = DZ_;
  T* grads = grads_.data();
  T* const gin = g;

  // the norm layer's backward: dz = dL/dz from g = dL/da_{l+1}; the bias and norm
  // gradients; ||dL/da_{l+1}|| and the norms of the parameter gradients into the report
  NormBackwardReport out;
  out.grad_norm = &rep.activation[size_t(l) + 1];
  out.first_nonfinite = &rep.first_nonfinite;
  out.index = int(l + 1);
  out.bias_norm = &rep.bias[size_t(l)];
  if (!rep.norm_weight.empty()) {
    out.weight_norm = &rep.norm_weight[size_t(l)];
    out.shift_norm = &rep.norm_bias[size_t(l)];
  }
  if (report_ && forensics) {  // the health statistics of g = dL/da_{l+1}, act' and dz
    out.health = hcnt_.data() + (l + 1) * nrb_ * 3;
    out.health_dmax = HD_ + l * nrb_ * maxw_;
  }
  norm_backward(cfg_.norm, norms_[size_t(l)], gin, D_[size_t(l)], scale,
                act_selects(cfg_.act.kind), report_, training, accumulate, dz,
                ly.b >= 0 ? grads + ly.b : nullptr, row_pass(), out);
  if (per_example_) {  // example i's ||dz_i||^2 and ||a_i||^2 (+ the norm's gamma/beta terms)
    const int64_t L1B = (L_ + 1) * B;
    double* pz = pe_.data() + l * B;
    double* pa = pz + L1B;
    double* pg = pa + L1B;
    double* pb = pg + L1B;
    const T* xh = norms_[size_t(l)].xhat;
    const bool affine = cfg_.norm != NormKind::None;
    const bool sel = act_selects(cfg_.act.kind);
    const auto& Kx = kernels<T>();
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
      Kx.row_sumsq(dz + r0 * n, rows, n, pz + r0);
      Kx.row_sumsq(A_[size_t(l)] + r0 * k, rows, k, pa + r0);
      if (affine)
        Kx.ln_example_ss(gin + r0 * n, D_[size_t(l)] + r0 * n, xh + r0 * n, scale, sel, rows, n,
                        pg + r0, pb + r0);
    }
  }

  // dW = dz^T a_l  and  dL/da_l = dz W (+ g when residual): independent GEMMs, one loop.
  T* dW = grads + ly.w;
  const T* W = params_.data() + ly.w;
  const T* a = A_[size_t(l)];
  T* gout = res ? gin : g_other;
  const GemmSplit sw = gemm_split(n, k, B, detail::takes_panel<T>(B, k));
  const GemmSplit sa = gemm_split(B, k, n, detail::takes_panel<T>(n, k));
#pragma omp for schedule(dynamic, 1)
  for (int64_t i = 0; i < sw.count + sa.count; ++i) {
    if (stopping()) continue;  // cancelled: skip the rest
    if (i < sw.count) {  // each dW block's sum of squares while it is in cache
      gemm_block(sw, i, true, false, n, k, B, dz, n, a, k, accumulate ? T(1) : T(0), dW, k,
                 packs(), report_ ? &chunk_ss_[size_t(i)] : nullptr);
    } else {
      gemm_block(sa, i - sw.count, false, false, B, k, n, dz, n, W, k, res ? T(1) : T(0), gout, k,
                 packs());
    }
  }
#pragma omp single nowait  // ||dW||: block partials in block order (nothing waits on it)
  if (report_) {
    double ss = 0.0;
    for (int64_t c = 0; c < sw.count; ++c) ss += chunk_ss_[size_t(c)];
    rep.weight[size_t(l)] = norm_from_sumsq(dW, n * k, ss);
  }
  if (!res) {  // every thread swaps its own copies identically
    g_other = g;
    g = gout;
  }
}

template <class T>
MlpReport MlpChain<T>::backward(const T* gy, T* dx, bool accumulate, bool report,
                                bool per_example) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_forward_) throw std::logic_error("backward() called before forward()");
  if (per_example && cfg_.norm == NormKind::Batch && training)
    throw std::invalid_argument(
        "per_example: batch norm in training mode couples the examples of a batch (each "
        "example's gradient depends on the others); use model.eval() or a model without it");
  report_ = report;
  per_example_ = per_example;
  const bool health = report && forensics;
  if (health) std::fill(hcnt_.begin(), hcnt_.end(), 0.0);
  if (per_example) std::fill(pe_.begin(), pe_.end(), 0.0);
  const auto& K = kernels<T>();
  const int64_t B = B_;
  MlpReport rep;
  rep.weight.assign(size_t(L_ + 1), 0.0);
  rep.bias.assign(size_t(L_ + 1), 0.0);
  rep.activation.assign(size_t(L_ + 1), 0.0);
  if (norm_affine(cfg_.norm)) {  // the report's norm entries: gamma and beta
    rep.norm_weight.assign(size_t(L_), 0.0);
    rep.norm_bias.assign(size_t(L_), 0.0);
  }
  rep.forward_first_nonfinite = fwd_nonfinite_;
  GovernedRegion region(work_cap(B));
  const int nt = region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  T* grads = grads_.data();
  const int64_t in0 = cfg_.sizes[0];
  stop_ = cancel_flag();
  if (stopping()) throw Cancelled();
  // decisions per step (step_at): 0 the output layer, L - l hidden layer l, L + 1 dL/dx
  std::vector<unsigned char> at(size_t(L_ + 3), 0);
  T* g_at[2] = {G0_, G1_};  // the master's g and g_other where its region left the steps

  // Steps s0.. by every thread of a region, from g (dL/d of the layer above) and g_other:
  // cancelled or bailed out, every thread leaves at the same step.
  auto steps = [&](int64_t s0, T* g, T* g_other, GovernedRegion* rg) {
    bool stopped = false;
    if (s0 == 0) {
      stopped = step_at(at.data(), 0, stop_, rg) != 0;  // false (checked above)
      // Output layer: db = sum_b gy, dW = gy^T a_L, dL/da_L = gy W.
      const Layer& ly = layers_[size_t(L_)];
      const int64_t n = ly.out, k = ly.in;
      double* p0 = part_.data();
      if (ly.b >= 0) {
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb_; ++rb) {
          std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
          K.col_sum(gy + rb * kRowBlock * n, rows_in_block(rb, B), n, p0 + rb * n);
        }
#pragma omp single nowait
        {
          T* db = grads + ly.b;
          rep.bias[size_t(L_)] =
              norm_from_sumsq(db, n, reduce_store(p0, nrb_, n, db, accumulate));
        }
      }
      T* dW = grads + ly.w;
      const T* W = params_.data() + ly.w;
      const GemmSplit sw = gemm_split(n, k, B, detail::takes_panel<T>(B, k));
      const GemmSplit sa = gemm_split(B, k, n, detail::takes_panel<T>(n, k));
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < sw.count + sa.count; ++i) {
        if (stopping()) continue;  // cancelled: skip the rest
        if (i < sw.count) {
          gemm_block(sw, i, true, false, n, k, B, gy, n, A_[size_t(L_)], k,
                     accumulate ? T(1) : T(0), dW, k, packs(),
                     report_ ? &chunk_ss_[size_t(i)] : nullptr);
        } else {
          gemm_block(sa, i - sw.count, false, false, B, k, n, gy, n, W, k, T(0), g, k,
                     packs());
        }
      }
#pragma omp single nowait
      if (report_) {
        double ss = 0.0;
        for (int64_t c = 0; c < sw.count; ++c) ss += chunk_ss_[size_t(c)];
        rep.weight[size_t(L_)] = norm_from_sumsq(dW, n * k, ss);
      }
      if (per_example_) {  // the output layer's dz is dL/dy
        double* pz = pe_.data() + L_ * B;
        double* pa = pz + (L_ + 1) * B;
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb_; ++rb) {
          const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
          K.row_sumsq(gy + r0 * n, rows, n, pz + r0);
          K.row_sumsq(A_[size_t(L_)] + r0 * k, rows, k, pa + r0);
        }
      }
    }
    for (int64_t l = std::min(L_ - 1, L_ - s0); l >= 0 && !stopped; --l)
      if (!(stopped = step_at(at.data(), L_ - l, stop_, rg) != 0))
        layer_backward(l, accumulate, g, g_other, rep);
    // dL/dx: its norm, then out.
    if (!stopped && !step_at(at.data(), L_ + 1, stop_, rg)) {
      if (report_) {
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb_; ++rb) {
          const int64_t rows = rows_in_block(rb, B);
          blk_[size_t(rb)] = K.sumsq(g + rb * kRowBlock * in0, rows * in0);
          if (health) {  // dL/dx's zeros and subnormals
            GradHealth<T> h;
            K.grad_health(g + rb * kRowBlock * in0, nullptr, nullptr, rows, in0, &h);
            hcnt_[size_t(3 * rb)] = h.zeros;
            hcnt_[size_t(3 * rb + 1)] = h.subnormals;
          }
        }
      }
#pragma omp single
      {
        if (report_) {
          double ss = 0.0;
          for (int64_t rb = 0; rb < nrb_; ++rb) ss += blk_[size_t(rb)];
          const double nrm = norm_from_sumsq(g, B * in0, ss);
          rep.activation[0] = nrm;
          if (has_nonfinite(ss, nrm) && rep.first_nonfinite < 0) rep.first_nonfinite = 0;
        }
        if (dx) std::memcpy(dx, g, size_t(B * in0) * sizeof(T));
      }
    }
    if (thread_num() == 0) {  // every thread holds the same pair
      g_at[0] = g;
      g_at[1] = g_other;
    }
  };

#pragma omp parallel num_threads(nt)
  {
    region.enter();
    steps(0, G0_, G1_, &region);
    region.leave();
  }
  const int64_t s = bailed_at(at.data(), L_ + 2);
  region.done(s >= 0);
  if (s >= 0) {  // starved: the rest on this thread alone
    std::fill(at.begin() + s, at.end(), 0);
    at[size_t(s)] = stopping() ? 1 : 0;
#pragma omp parallel num_threads(1)
    steps(s, g_at[0], g_at[1], nullptr);
  }
  if (stopping()) throw Cancelled();
  std::vector<double> all(rep.weight);
  if (cfg_.bias) all.insert(all.end(), rep.bias.begin(), rep.bias.end());
  all.insert(all.end(), rep.norm_weight.begin(), rep.norm_weight.end());
  all.insert(all.end(), rep.norm_bias.begin(), rep.norm_bias.end());
  rep.global_norm = combine_norms(all);
  fill_forensics(rep, health, per_example);
  return rep;
}

// ---------------------------------------------------------------------------
// Forensics: health statistics, non-finite stages, per-example norms
// ---------------------------------------------------------------------------
template <class T>
NonfiniteStage MlpChain<T>::diagnose_forward(int64_t l) {
  const Layer& ly = layers_[size_t(l)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const T* P = params_.data();
  const T* W = P + ly.w;
  const T* b = ly.b >= 0 ? P + ly.b : nullptr;
  if (any_nonfinite(W, n * k) || (b && any_nonfinite(b, n))) return NonfiniteStage::Parameter;
  if (ly.gamma >= 0 && (any_nonfinite(P + ly.gamma, n) || any_nonfinite(P + ly.beta, n)))
    return NonfiniteStage::Parameter;
  if (ly.rmean >= 0 && !training &&
      (any_nonfinite(buffers_.data() + ly.rmean, n) || any_nonfinite(buffers_.data() + ly.rvar, n)))
    return NonfiniteStage::Parameter;  // eval-mode batch norm: its running statistics
  // z = a_l W^T + b again (a_l is finite: layer l is the first with a non-finite output)
  T* z = DZ_;
  gemm(false, true, B, n, k, T(1), A_[size_t(l)], k, W, k, T(0), z, n);
  if (b)
    for (int64_t r = 0; r < B; ++r)
      for (int64_t c = 0; c < n; ++c) z[r * n + c] += b[c];
  if (l == L_ || any_nonfinite(z, B * n)) return NonfiniteStage::Linear;
  const NormLayerView<T>& nv = norms_[size_t(l)];
  const T* pre = z;
  if (cfg_.norm != NormKind::None) {
    if (any_nonfinite(nv.xhat, B * n)) return NonfiniteStage::Norm;
    T* nn = G1_;  // n = gamma * xhat + beta
    for (int64_t r = 0; r < B; ++r)
      for (int64_t c = 0; c < n; ++c)
        nn[r * n + c] = nv.gamma[c] * nv.xhat[r * n + c] + nv.beta[c];
    if (any_nonfinite(nn, B * n)) return NonfiniteStage::Norm;
    pre = nn;
  }
  if (!cfg_.residual[size_t(l)] || cfg_.act.kind == Act::Custom) return NonfiniteStage::Activation;
  T* f = G0_;
  T* df = DZ_;  // z is no longer needed
  kernels<T>().act_apply(cfg_.act, pre, f, df, B * n);
  return any_nonfinite(f, B * n) ? NonfiniteStage::Activation : NonfiniteStage::Residual;
}

template <class T>
void MlpChain<T>::fill_forensics(MlpReport& rep, bool health, bool per_example) {
  const int64_t B = B_;
  rep.forward_stage = fwd_nonfinite_ > 0 ? fwd_stage_ : NonfiniteStage::None;
  if (health) {
    rep.dead.assign(size_t(L_), 0.0);
    rep.saturated.assign(size_t(L_), 0.0);
    rep.mean_abs.assign(size_t(L_), 0.0);
    rep.zeros.assign(size_t(L_ + 1), 0.0);
    rep.subnormals.assign(size_t(L_ + 1), 0.0);
    const double thr = health_threshold;
    const bool sat_defined = thr == thr;
    for (int64_t l = 0; l < L_; ++l) {
      const int64_t n = layers_[size_t(l)].out;
      const T* hd = HD_ + l * nrb_ * maxw_;
      int64_t dead = 0, sat = 0;
      dead_saturated(hd, nrb_, n, thr, dead, sat);
      rep.dead[size_t(l)] = double(dead) / double(n);
      rep.saturated[size_t(l)] =
          sat_defined ? double(sat) / double(n) : std::numeric_limits<double>::quiet_NaN();
      double s = 0.0;
      for (int64_t rb = 0; rb < nrb_; ++rb) s += fabs_[size_t(l * nrb_ + rb)];
      rep.mean_abs[size_t(l)] = s / (double(B) * double(n));
    }
    for (int64_t l = 0; l <= L_; ++l) {
      double z = 0.0, sub = 0.0;
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        z += hcnt_[size_t(3 * (l * nrb_ + rb))];
        sub += hcnt_[size_t(3 * (l * nrb_ + rb) + 1)];
      }
      const double numel = double(B) * double(cfg_.sizes[size_t(l)]);
      rep.zeros[size_t(l)] = z / numel;
      rep.subnormals[size_t(l)] = sub / numel;
    }
    // where a NaN/Inf of the backward was born: dL/da_l is the output of hidden layer l
    // (l = L: of the output layer, dL/dy W_out), whose input dL/da_{l+1} was finite
    const int l = rep.first_nonfinite;
    if (l >= 0 && fwd_nonfinite_ < 0) {
      rep.backward_stage = NonfiniteStage::Product;
      if (l < L_) {
        double chk = 0.0;
        for (int64_t rb = 0; rb < nrb_; ++rb) chk += hcnt_[size_t(3 * ((l + 1) * nrb_ + rb) + 2)];
        if (chk != chk)
          rep.backward_stage = cfg_.norm != NormKind::None ? NonfiniteStage::NormBackward
                                                           : NonfiniteStage::ActivationBackward;
      }
    }
  }
  if (per_example) {
    const int64_t L1B = (L_ + 1) * B;
    const double* pz = pe_.data();
    const double* pa = pz + L1B;
    const double* pg = pa + L1B;
    const double* pb = pg + L1B;
    const double one = cfg_.bias ? 1.0 : 0.0;
    rep.example_layer.assign(size_t(L1B), 0.0);
    for (int64_t i = 0; i < L1B; ++i)
      rep.example_layer[size_t(i)] = std::sqrt(pz[i] * (pa[i] + one) + pg[i] + pb[i]);
  }
}

template class MlpChain<float>;
template class MlpChain<double>;

}  // namespace gradchain
