// mlp.cpp — the MLP chain driver: planned workspace, forward and backward over
// the layer pairs, per-layer gradient norms computed inside the passes.
//
// Parallel structure: one OpenMP region for the whole forward (and one for the
// whole backward); inside it every layer runs `omp for` loops over fixed
// blocks (GEMM blocks from gemm_split, row blocks of kRowBlock rows), with
// `omp single` steps for the small column reductions. OpenBLAS runs
// single-threaded inside each block, so nothing is oversubscribed and no
// number depends on the thread count.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "gradchain/blas.h"
#include "gradchain/chain.h"
#include "gradchain/dispatch.h"
#include "gradchain/parallel.h"
#include "chain_util.h"

namespace gradchain {

using detail::block_args;
using detail::gemm_block;
using detail::PackScratch;
using detail::gemm_block_sumsq;
using detail::has_nonfinite;
using detail::reduce_store;
using detail::rows_in_block;

// ---------------------------------------------------------------------------
// Buffer
// ---------------------------------------------------------------------------
template <class T>
Buffer<T>::Buffer(int64_t n, const char* what) : n_(n) {
  if (n <= 0) return;
  if (uint64_t(n) > uint64_t(std::numeric_limits<int64_t>::max()) / sizeof(T) / 2)
    throw AllocError(alloc_message(what, double(n) * double(sizeof(T))));
  const size_t bytes = ((size_t(n) * sizeof(T) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw AllocError(alloc_message(what, double(bytes)));
  ptr_.reset(static_cast<T*>(p));
}

template <class T>
void Buffer<T>::Free::operator()(void* p) const {
  std::free(p);
}

template class Buffer<float>;
template class Buffer<double>;


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
MlpChain<T>::MlpChain(MlpConfig cfg) : cfg_(std::move(cfg)) {
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

  int64_t np = 0, nb = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, int kind) {
    int64_t numel = 1;
    for (int64_t d : shape) {
      if (numel > (int64_t(1) << 40) / d)
        throw AllocError("gradchain: cannot allocate the parameters of " + describe() +
                         ": more than 2^40 values");
      numel *= d;
    }
    int64_t& cursor = kind == 0 ? np : nb;
    tensors_.push_back({std::move(name), cursor, std::move(shape), kind});
    const int64_t off = cursor;
    cursor += numel;
    return off;
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
  if (cfg_.norm != NormKind::None) {
    for (int64_t l = 0; l < L_; ++l) {
      Layer& ly = layers_[size_t(l)];
      const std::string p = "norms." + std::to_string(l);
      ly.gamma = add(p + ".weight", {ly.out}, 0);
      ly.beta = add(p + ".bias", {ly.out}, 0);
    }
    if (cfg_.norm == NormKind::Batch) {
      for (int64_t l = 0; l < L_; ++l) {
        Layer& ly = layers_[size_t(l)];
        const std::string p = "norms." + std::to_string(l);
        ly.rmean = add(p + ".running_mean", {ly.out}, 1);
        ly.rvar = add(p + ".running_var", {ly.out}, 1);
      }
    }
  }
  try {
    params_ = Buffer<T>(np);
    grads_ = Buffer<T>(np);
    buffers_ = Buffer<T>(nb);
  } catch (const std::bad_alloc&) {
    throw AllocError(alloc_message("the parameters, gradients and buffers of " + describe(),
                                   double(2 * np + nb) * double(sizeof(T))));
  }
  std::memset(params_.data(), 0, size_t(np) * sizeof(T));
  std::memset(grads_.data(), 0, size_t(np) * sizeof(T));
  for (auto& ly : layers_) {
    if (ly.gamma >= 0)
      for (int64_t c = 0; c < ly.out; ++c) {
        params_.data()[ly.gamma + c] = T(1);
        params_.data()[ly.beta + c] = T(0);
      }
    if (ly.rmean >= 0)
      for (int64_t c = 0; c < ly.out; ++c) {
        buffers_.data()[ly.rmean + c] = T(0);
        buffers_.data()[ly.rvar + c] = T(1);
      }
  }
  maxw_ = 0;
  int64_t max_chunks = 1;
  for (auto& ly : layers_) {
    maxw_ = ly.in > maxw_ ? ly.in : maxw_;
    maxw_ = ly.out > maxw_ ? ly.out : maxw_;
    const int64_t rpc = kNormChunk / ly.in > 0 ? kNormChunk / ly.in : 1;
    const int64_t nc = ceil_div(ly.out, rpc);
    max_chunks = nc > max_chunks ? nc : max_chunks;
  }
  try {
    chunk_ss_.assign(size_t(max_chunks > kGemmBlocks ? max_chunks : kGemmBlocks), 0.0);
    if (cfg_.norm == NormKind::Batch) {
      bmean_.assign(size_t(L_ * maxw_), 0.0);
      bvar_.assign(size_t(L_ * maxw_), 0.0);
    }
  } catch (const std::bad_alloc&) {
    throw AllocError(alloc_message("the batch statistics of " + describe(),
                                   double(2 * L_ * maxw_) * double(sizeof(double))));
  }
}

template <class T>
std::vector<std::pair<T*, int64_t>> MlpChain<T>::grad_spans() {
  std::vector<std::pair<T*, int64_t>> out;
  for (auto& t : tensors_) {
    if (t.kind != 0) continue;
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    out.emplace_back(grads_.data() + t.offset, numel);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Workspace: planned once per batch size; nothing is allocated in the chain loop.
// ---------------------------------------------------------------------------
template <class T>
int64_t MlpChain<T>::workspace_values(int64_t B) const {
  const bool norm = cfg_.norm != NormKind::None;
  int64_t total = B * cfg_.sizes[0];
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t h = layers_[size_t(l)].out;
    total += B * h * (norm ? 3 : 2);  // a, d, xhat
    if (cfg_.norm == NormKind::Batch) total += 2 * h;
    if (cfg_.norm == NormKind::Layer) total += 2 * B;
  }
  return total + 3 * B * maxw_ + 3 * maxw_;  // G0, G1, DZ; k/m1/m2 scratch
}

// The doubles plan(B) allocates besides ws_: part_, blk_, fchk_ and colsum_.
namespace {
inline int64_t mlp_double_values(int64_t B, int64_t L, int64_t maxw) {
  const int64_t nrb = ceil_div(B, kRowBlock);
  return 3 * nrb * maxw + nrb + (L + 1) * nrb + 2 * maxw;
}
constexpr int64_t kHugeBytes = int64_t(1) << 60;  // beyond any memory; sizes above overflow
}  // namespace

// Whether a workspace for B rows would pass kHugeBytes (its size in int64 could overflow).
template <class T>
bool MlpChain<T>::workspace_huge(int64_t B) const {
  double per_row = double(cfg_.sizes[0]) + 3.0 * double(maxw_) + 3.0 * double(maxw_) / kRowBlock;
  for (int64_t l = 0; l < L_; ++l) per_row += 3.0 * double(layers_[size_t(l)].out) + 2.0;
  return double(B) * per_row * 8.0 + 16.0 * double(maxw_) > double(kHugeBytes);
}

template <class T>
int64_t MlpChain<T>::held_workspace_bytes() const {
  return ws_.size() * int64_t(sizeof(T)) + part_.size() * int64_t(sizeof(double)) +
         int64_t(blk_.size() + fchk_.size() + colsum_[0].size() + colsum_[1].size()) *
             int64_t(sizeof(double));
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
  return need + detail::pack_scratch_bytes(pack_, slot, threads_for(B * maxw_ * 4));
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
  const bool norm = cfg_.norm != NormKind::None;
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
  } catch (const std::bad_alloc&) {
    ws_ = Buffer<T>();
    part_ = Buffer<double>();
    throw AllocError(alloc_message(
        "the workspace for a batch of " + std::to_string(B) + " rows of " + describe(),
        double(total) * double(sizeof(T)) +
            double(mlp_double_values(B, L_, maxw_)) * double(sizeof(double))));
  }
  T* p = ws_.data();
  auto take = [&](int64_t n) { T* q = p; p += n; return q; };
  A_.assign(size_t(L_ + 1), nullptr);
  D_.assign(size_t(L_), nullptr);
  XH_.assign(size_t(L_), nullptr);
  shift_.assign(size_t(L_), nullptr);
  istd_.assign(size_t(L_), nullptr);
  rowmean_.assign(size_t(L_), nullptr);
  rowistd_.assign(size_t(L_), nullptr);
  A_[0] = take(B * cfg_.sizes[0]);
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t h = layers_[size_t(l)].out;
    A_[size_t(l) + 1] = take(B * h);
    D_[size_t(l)] = take(B * h);
    if (norm) XH_[size_t(l)] = take(B * h);
    if (cfg_.norm == NormKind::Batch) {
      shift_[size_t(l)] = take(h);
      istd_[size_t(l)] = take(h);
    }
    if (cfg_.norm == NormKind::Layer) {
      rowmean_[size_t(l)] = take(B);
      rowistd_[size_t(l)] = take(B);
    }
  }
  G0_ = take(B * maxw_);
  G1_ = take(B * maxw_);
  DZ_ = take(B * maxw_);
  scratch_ = take(3 * maxw_);
  B_ = B;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
// Hidden layer l (0-based): a_{l+1} = [a_l + alpha *] act(Norm(a_l W^T + b)).
// Called by every thread of the region. With skip_act the activation is the
// identity and the residual is left out (the custom-activation path finishes it).
template <class T>
void MlpChain<T>::layer_forward(int64_t l, bool skip_act) {
  const auto& K = kernels<T>();
  const Layer& ly = layers_[size_t(l)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const T* in = A_[size_t(l)];
  T* out = A_[size_t(l) + 1];
  T* d = D_[size_t(l)];
  const T* W = params_.data() + ly.w;
  const T* b = ly.b >= 0 ? params_.data() + ly.b : nullptr;

  const GemmSplit gs = gemm_split(B, n, k);
#pragma omp for schedule(static)  // z = a_l W^T, over fixed GEMM blocks
  for (int64_t blk = 0; blk < gs.count; ++blk)
    if (!stopping())  // cancelled: skip the rest (the pass will be thrown away)
      gemm_block(gs, blk, false, true, B, n, k, in, k, W, k, T(0), out, n,
                 PackScratch<T>{pack_base_, pack_slot_});

  double* fchk = fchk_.data() + l * nrb_;  // per-block non-finite checks of a_{l+1}
  FwdArgs<T> args;
  args.act = cfg_.act;
  if (skip_act) args.act.kind = Act::Identity;
  args.resid = (!skip_act && cfg_.residual[size_t(l)]) ? in : nullptr;
  args.alpha = T(cfg_.residual_scale);
  args.eps = T(cfg_.eps);

  switch (cfg_.norm) {
    case NormKind::None: {
      args.bias = b;
#pragma omp for schedule(static)  // fused bias + activation + derivative, over row blocks
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
        fchk[rb] = K.fwd_plain(block_args(args, r0, n), out + r0 * n, out + r0 * n, d + r0 * n,
                               rows, n);
      }
      break;
    }
    case NormKind::Batch: {
      T* shift = shift_[size_t(l)];
      T* istd = istd_[size_t(l)];
      double* mean = bmean_.data() + l * maxw_;
      double* var = bvar_.data() + l * maxw_;
      double* p0 = part_.data();
      double* p1 = p0 + nrb_ * maxw_;
      if (training) {
        // Batch statistics of z (without b: the bias cancels in xhat) in one pass:
        // float64 moments shifted by the batch's first row (so S2/B - (S1/B)^2 does
        // not cancel), partials per row block, reduced in block order.
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb_; ++rb) {
          std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
          std::memset(p1 + rb * n, 0, size_t(n) * sizeof(double));
          K.col_moments(out + rb * kRowBlock * n, out, rows_in_block(rb, B), n, p0 + rb * n,
                        p1 + rb * n);
        }
#pragma omp single
        for (int64_t c = 0; c < n; ++c) {
          double s1 = 0.0, s2 = 0.0;
          for (int64_t r = 0; r < nrb_; ++r) {
            s1 += p0[r * n + c];
            s2 += p1[r * n + c];
          }
          const double d = s1 / double(B);
          mean[c] = double(out[c]) + d;
          var[c] = std::max(s2 / double(B) - d * d, 0.0);
          shift[c] = T(mean[c]);
          istd[c] = T(1.0 / std::sqrt(var[c] + cfg_.eps));
        }
      } else {
        const T* rm = buffers_.data() + ly.rmean;
        const T* rv = buffers_.data() + ly.rvar;
#pragma omp single
        for (int64_t c = 0; c < n; ++c) {
          shift[c] = T(double(rm[c]) - (b ? double(b[c]) : 0.0));
          istd[c] = T(1.0 / std::sqrt(double(rv[c]) + cfg_.eps));
        }
      }
      args.col_shift = shift;
      args.col_scale = istd;
      args.gamma = params_.data() + ly.gamma;
      args.beta = params_.data() + ly.beta;
      T* xh = XH_[size_t(l)];
#pragma omp for schedule(static)  // fused normalise + affine + activation + derivative
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
        fchk[rb] =
            K.fwd_batchnorm(block_args(args, r0, n), out + r0 * n, xh + r0 * n, out + r0 * n, d + r0 * n, rows, n);
      }
      break;
    }
    case NormKind::Layer: {
      args.bias = b;
      args.gamma = params_.data() + ly.gamma;
      args.beta = params_.data() + ly.beta;
      T* xh = XH_[size_t(l)];
#pragma omp for schedule(static)  // per-row statistics + fused epilogue
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
        fchk[rb] =
            K.fwd_layernorm(block_args(args, r0, n), out + r0 * n, xh + r0 * n, out + r0 * n, d + r0 * n,
                            rowmean_[size_t(l)] + r0, rowistd_[size_t(l)] + r0, rows, n);
      }
      break;
    }
  }
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
  for (int64_t rb = 0; rb < nrb_; ++rb) fchk_[size_t(l * nrb_ + rb)] = 0.0;
  fchk_[size_t(l * nrb_)] = bad ? std::numeric_limits<double>::quiet_NaN() : 0.0;
}

template <class T>
void MlpChain<T>::output_forward(T* y) {
  const auto& K = kernels<T>();
  const Layer& ly = layers_[size_t(L_)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const T* W = params_.data() + ly.w;
  const T* b = ly.b >= 0 ? params_.data() + ly.b : nullptr;
  const GemmSplit gs = gemm_split(B, n, k);
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < gs.count; ++blk)
    if (!stopping())
      gemm_block(gs, blk, false, true, B, n, k, A_[size_t(L_)], k, W, k, T(0), y, n,
                 PackScratch<T>{pack_base_, pack_slot_});
  double* chk = fchk_.data() + L_ * nrb_;
#pragma omp for schedule(static)
  for (int64_t rb = 0; rb < nrb_; ++rb)
    chk[rb] = K.add_bias(y + rb * kRowBlock * n, b, rows_in_block(rb, B), n);
}

template <class T>
void MlpChain<T>::forward(const T* x, int64_t B, T* y) {
  std::lock_guard<std::mutex> lock(mu_);
  if (B < 1) throw std::invalid_argument("batch size must be >= 1");
  if (cfg_.norm == NormKind::Batch && training && B == 1)
    throw std::invalid_argument(
        "Expected more than 1 value per channel when training with batch norm, got batch size 1");
  if (cfg_.act.kind == Act::Custom && !custom_)
    throw std::logic_error("custom activation has no callable");
  plan(B);
  has_forward_ = false;
  std::memcpy(A_[0], x, size_t(B * cfg_.sizes[0]) * sizeof(T));
  fwd_nonfinite_ = -1;
  const int nt = threads_for(B * maxw_ * 4);
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  stop_ = cancel_flag();
  if (cfg_.act.kind == Act::Custom) {
    for (int64_t l = 0; l < L_; ++l) {
#pragma omp parallel num_threads(nt)
      layer_forward(l, true);
      if (stopping()) throw Cancelled();
      layer_forward_custom_tail(l);  // may throw: running statistics are not yet touched
    }
#pragma omp parallel num_threads(nt)
    output_forward(y);
  } else {
    std::vector<unsigned char> at(size_t(L_ + 2), 0);  // stop decisions per layer (stop_at)
    at[0] = stopping() ? 1 : 0;
#pragma omp parallel num_threads(nt)  // all layers inside one region; threads step through them together
    {
      bool stopped = false;  // cancelled: every thread leaves at the same layer
      for (int64_t l = 0; l < L_ && !stopped; ++l)
        if (!(stopped = detail::stop_at(at.data(), l, stop_))) layer_forward(l, false);
      if (!stopped && !detail::stop_at(at.data(), L_, stop_)) output_forward(y);
    }
  }
  if (stopping()) throw Cancelled();  // before anything is committed
  for (int64_t l = 0; l <= L_ && fwd_nonfinite_ < 0; ++l)  // first a_l (l = L+1: y) with NaN/Inf
    for (int64_t rb = 0; rb < nrb_; ++rb)
      if (std::isnan(fchk_[size_t(l * nrb_ + rb)])) {
        fwd_nonfinite_ = int(l + 1);
        break;
      }
  // Commit the running statistics only now that the whole pass succeeded.
  if (cfg_.norm == NormKind::Batch && training) {
    const double m = cfg_.momentum;
    const double unbias = double(B) / double(B - 1);
    for (int64_t l = 0; l < L_; ++l) {
      const Layer& ly = layers_[size_t(l)];
      T* rm = buffers_.data() + ly.rmean;
      T* rv = buffers_.data() + ly.rvar;
      const T* b = ly.b >= 0 ? params_.data() + ly.b : nullptr;
      const double* mean = bmean_.data() + l * maxw_;
      const double* var = bvar_.data() + l * maxw_;
      for (int64_t c = 0; c < ly.out; ++c) {
        const double bm = mean[c] + (b ? double(b[c]) : 0.0);
        rm[c] = T((1.0 - m) * double(rm[c]) + m * bm);
        rv[c] = T((1.0 - m) * double(rv[c]) + m * var[c] * unbias);
      }
    }
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
  const auto& K = kernels<T>();
  const Layer& ly = layers_[size_t(l)];
  const int64_t B = B_, n = ly.out, k = ly.in;
  const bool res = cfg_.residual[size_t(l)] != 0;
  const T scale = res ? T(cfg_.residual_scale) : T(1);
  const bool select = cfg_.act.kind == Act::Relu || cfg_.act.kind == Act::Hardtanh;
  const T* d = D_[size_t(l)];
  const T* xh = XH_[size_t(l)];
  T* dz = DZ_;
  T* grads = grads_.data();
  const bool bias = ly.b >= 0;
  double* p0 = part_.data();
  double* p1 = p0 + nrb_ * maxw_;
  double* p2 = p1 + nrb_ * maxw_;
  T* const gin = g;

  auto record_act = [&](double ss) {  // ||dL/da_{l+1}|| (inside omp single)
    const double nrm = norm_from_sumsq(gin, B * n, ss);
    rep.activation[size_t(l) + 1] = nrm;
    if (has_nonfinite(ss, nrm) && rep.first_nonfinite < 0) rep.first_nonfinite = int(l + 1);
  };

  switch (cfg_.norm) {
    case NormKind::None: {
#pragma omp for schedule(static)  // dz = g * scale * act'; db partials; sum g^2
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const int64_t r0 = rb * kRowBlock;
        if (bias) std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
        blk_[size_t(rb)] = K.bwd_plain(gin + r0 * n, d + r0 * n, scale, select, report_, dz + r0 * n,
                                       bias ? p0 + rb * n : nullptr, rows_in_block(rb, B), n);
      }
#pragma omp single
      {
        double ss = 0.0;
        for (int64_t rb = 0; rb < nrb_; ++rb) ss += blk_[size_t(rb)];
        record_act(ss);
        if (bias) {
          T* db = grads + ly.b;
          rep.bias[size_t(l)] = norm_from_sumsq(db, n, reduce_store(p0, nrb_, n, db, accumulate));
        }
      }
      break;
    }
    case NormKind::Batch: {
#pragma omp for schedule(static)  // dn = g * scale * act'; sum dn, sum dn * xhat; sum g^2
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const int64_t r0 = rb * kRowBlock;
        std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
        std::memset(p1 + rb * n, 0, size_t(n) * sizeof(double));
        blk_[size_t(rb)] = K.bwd_bn1(gin + r0 * n, d + r0 * n, xh + r0 * n, scale, select, dz + r0 * n,
                                     p0 + rb * n, p1 + rb * n, rows_in_block(rb, B), n);
      }
#pragma omp single
      {
        double ss = 0.0;
        for (int64_t rb = 0; rb < nrb_; ++rb) ss += blk_[size_t(rb)];
        record_act(ss);
        // dbeta = sum dn, dgamma = sum dn * xhat (the sums before storing, for the means)
        double* sb = colsum_[0].data();
        double* sg = colsum_[1].data();
        for (int64_t c = 0; c < n; ++c) {
          double a0 = 0.0, a1 = 0.0;
          for (int64_t r = 0; r < nrb_; ++r) {
            a0 += p0[r * n + c];
            a1 += p1[r * n + c];
          }
          sb[c] = a0;
          sg[c] = a1;
        }
        T* dgamma = grads + ly.gamma;
        T* dbeta = grads + ly.beta;
        double ssg = 0.0, ssb = 0.0;
        for (int64_t c = 0; c < n; ++c) {
          const T vg = accumulate ? T(dgamma[c] + T(sg[c])) : T(sg[c]);
          const T vb = accumulate ? T(dbeta[c] + T(sb[c])) : T(sb[c]);
          dgamma[c] = vg;
          dbeta[c] = vb;
          ssg += double(vg) * double(vg);
          ssb += double(vb) * double(vb);
        }
        rep.norm_weight[size_t(l)] = norm_from_sumsq(dgamma, n, ssg);
        rep.norm_bias[size_t(l)] = norm_from_sumsq(dbeta, n, ssb);
        // dz = gamma * istd * (dn - mean(dn) - xhat * mean(dn * xhat)) in training;
        // in eval mode the statistics are constants: dz = gamma * istd * dn.
        T* kv = scratch_;
        T* m1 = kv + maxw_;
        T* m2 = m1 + maxw_;
        const T* gamma = params_.data() + ly.gamma;
        const T* istd = istd_[size_t(l)];
        for (int64_t c = 0; c < n; ++c) {
          kv[c] = gamma[c] * istd[c];
          m1[c] = training ? T(sb[c] / double(B)) : T(0);
          m2[c] = training ? T(sg[c] / double(B)) : T(0);
        }
      }
      {
        const T* kv = scratch_;
        const T* m1 = kv + maxw_;
        const T* m2 = m1 + maxw_;
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb_; ++rb) {
          const int64_t r0 = rb * kRowBlock;
          if (bias) std::memset(p2 + rb * n, 0, size_t(n) * sizeof(double));
          K.bwd_bn2(dz + r0 * n, xh + r0 * n, kv, m1, m2, bias ? p2 + rb * n : nullptr,
                    rows_in_block(rb, B), n);
        }
      }
      if (bias) {
#pragma omp single nowait  // the GEMMs below do not read db
        {
          T* db = grads + ly.b;
          rep.bias[size_t(l)] = norm_from_sumsq(db, n, reduce_store(p2, nrb_, n, db, accumulate));
        }
      }
      break;
    }
    case NormKind::Layer: {
      const T* gamma = params_.data() + ly.gamma;
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const int64_t r0 = rb * kRowBlock;
        std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
        std::memset(p1 + rb * n, 0, size_t(n) * sizeof(double));
        if (bias) std::memset(p2 + rb * n, 0, size_t(n) * sizeof(double));
        blk_[size_t(rb)] = K.bwd_layernorm(gin + r0 * n, d + r0 * n, xh + r0 * n, gamma,
                                           rowistd_[size_t(l)] + r0, scale, select, dz + r0 * n,
                                           p0 + rb * n, p1 + rb * n, bias ? p2 + rb * n : nullptr,
                                           rows_in_block(rb, B), n);
      }
#pragma omp single
      {
        double ss = 0.0;
        for (int64_t rb = 0; rb < nrb_; ++rb) ss += blk_[size_t(rb)];
        record_act(ss);
        T* dgamma = grads + ly.gamma;
        T* dbeta = grads + ly.beta;
        rep.norm_weight[size_t(l)] =
            norm_from_sumsq(dgamma, n, reduce_store(p0, nrb_, n, dgamma, accumulate));
        rep.norm_bias[size_t(l)] =
            norm_from_sumsq(dbeta, n, reduce_store(p1, nrb_, n, dbeta, accumulate));
        if (bias) {
          T* db = grads + ly.b;
          rep.bias[size_t(l)] = norm_from_sumsq(db, n, reduce_store(p2, nrb_, n, db, accumulate));
        }
      }
      break;
    }
  }

  // dW = dz^T a_l  and  dL/da_l = dz W (+ g when residual): independent GEMMs, one loop.
  T* dW = grads + ly.w;
  const T* W = params_.data() + ly.w;
  const T* a = A_[size_t(l)];
  T* gout = res ? gin : g_other;
  const GemmSplit sw = gemm_split(n, k, B);
  const GemmSplit sa = gemm_split(B, k, n);
#pragma omp for schedule(dynamic, 1)
  for (int64_t i = 0; i < sw.count + sa.count; ++i) {
    if (stopping()) continue;  // cancelled: skip the rest
    if (i < sw.count) {  // each dW block's sum of squares while it is in cache
      gemm_block(sw, i, true, false, n, k, B, dz, n, a, k, accumulate ? T(1) : T(0), dW, k,
                 PackScratch<T>{pack_base_, pack_slot_});
      if (report_) chunk_ss_[size_t(i)] = gemm_block_sumsq(K, sw, i, n, k, dW, k);
    } else {
      gemm_block(sa, i - sw.count, false, false, B, k, n, dz, n, W, k, res ? T(1) : T(0), gout, k,
                 PackScratch<T>{pack_base_, pack_slot_});
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
MlpReport MlpChain<T>::backward(const T* gy, T* dx, bool accumulate, bool report) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_forward_) throw std::logic_error("backward() called before forward()");
  report_ = report;
  const auto& K = kernels<T>();
  const int64_t B = B_;
  MlpReport rep;
  rep.weight.assign(size_t(L_ + 1), 0.0);
  rep.bias.assign(size_t(L_ + 1), 0.0);
  rep.activation.assign(size_t(L_ + 1), 0.0);
  if (cfg_.norm != NormKind::None) {
    rep.norm_weight.assign(size_t(L_), 0.0);
    rep.norm_bias.assign(size_t(L_), 0.0);
  }
  rep.forward_first_nonfinite = fwd_nonfinite_;
  const int nt = threads_for(B * maxw_ * 4);
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  T* grads = grads_.data();
  const int64_t in0 = cfg_.sizes[0];
  stop_ = cancel_flag();
  if (stopping()) throw Cancelled();
  // stop decisions per step (stop_at): 0 the output layer, L - l hidden layer l, L + 1 dL/dx
  std::vector<unsigned char> at(size_t(L_ + 3), 0);

#pragma omp parallel num_threads(nt)
  {
    T* g = G0_;
    T* g_other = G1_;
    bool stopped = detail::stop_at(at.data(), 0, stop_);  // false (checked above)
    // Output layer: db = sum_b gy, dW = gy^T a_L, dL/da_L = gy W.
    {
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
      const GemmSplit sw = gemm_split(n, k, B);
      const GemmSplit sa = gemm_split(B, k, n);
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < sw.count + sa.count; ++i) {
        if (stopping()) continue;  // cancelled: skip the rest
        if (i < sw.count) {
          gemm_block(sw, i, true, false, n, k, B, gy, n, A_[size_t(L_)], k,
                     accumulate ? T(1) : T(0), dW, k, PackScratch<T>{pack_base_, pack_slot_});
          if (report_) chunk_ss_[size_t(i)] = gemm_block_sumsq(K, sw, i, n, k, dW, k);
        } else {
          gemm_block(sa, i - sw.count, false, false, B, k, n, gy, n, W, k, T(0), g, k,
                     PackScratch<T>{pack_base_, pack_slot_});
        }
      }
#pragma omp single nowait
      if (report_) {
        double ss = 0.0;
        for (int64_t c = 0; c < sw.count; ++c) ss += chunk_ss_[size_t(c)];
        rep.weight[size_t(L_)] = norm_from_sumsq(dW, n * k, ss);
      }
    }
    for (int64_t l = L_ - 1; l >= 0 && !stopped; --l)
      if (!(stopped = detail::stop_at(at.data(), L_ - l, stop_)))
        layer_backward(l, accumulate, g, g_other, rep);
    // dL/dx: its norm, then out.
    if (!stopped && !detail::stop_at(at.data(), L_ + 1, stop_)) {
      if (report_) {
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb_; ++rb)
          blk_[size_t(rb)] = K.sumsq(g + rb * kRowBlock * in0, rows_in_block(rb, B) * in0);
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
  }
  if (stopping()) throw Cancelled();
  std::vector<double> all(rep.weight);
  if (cfg_.bias) all.insert(all.end(), rep.bias.begin(), rep.bias.end());
  all.insert(all.end(), rep.norm_weight.begin(), rep.norm_weight.end());
  all.insert(all.end(), rep.norm_bias.begin(), rep.norm_bias.end());
  rep.global_norm = combine_norms(all);
  return rep;
}

template class MlpChain<float>;
template class MlpChain<double>;

}  // namespace gradchain
