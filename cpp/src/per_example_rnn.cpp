// per_example_rnn.cpp — exact per-example gradient norms of the vanilla RNN (see
// gradchain/per_example_rnn.h), from the backward's saved dL/dz_t, dL/dh_t and the
// forward's inputs and hidden states. One OpenMP region; each example is computed whole
// by one thread (its Gram matrices or its own gradient in that thread's workspace slot),
// so every number is the same for any thread count.
#include "gradchain/per_example_rnn.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "gradchain/blas.h"
#include "gradchain/cancel.h"
#include "gradchain/dispatch.h"
#include "gradchain/governor.h"
#include "gradchain/kernels.h"
#include "gradchain/parallel.h"
#include "gradchain/rnn.h"

namespace gradchain {

namespace {
// examples per block of the fused dW sums (a function of B only): at most 16 blocks (the
// region's parallelism), as many as there are examples up to 16
inline int64_t example_block(int64_t B) { return (B + 15) / 16; }
}  // namespace

bool rnn_example_gram(int64_t steps, int64_t I, int64_t H, int64_t K, int64_t G, bool apart) {
  // Gram: the T x T products of dz (G H, twice when dh is apart), x (I), h (H) and dL/dy
  // (K); direct: the GH x I, GH x H and K x H products over T (multiply-adds per example,
  // the bias terms alike)
  const double t = double(steps), gh = double(G * H);
  const double gram = t * t * (gh * (apart ? 2 : 1) + double(H + I + K));
  const double direct = t * (gh * double(I + H) + double(K * H));
  return gram < direct;
}

bool rnn_example_fuses(int path, int64_t steps, int64_t B, int64_t I, int64_t H, int64_t G) {
  if (path == int(ExamplePath::DirectSum)) return true;
  if (path != int(ExamplePath::Auto)) return false;
  // The examples' own gradients are GH x I and GH x H products over T rows each: as fast
  // as the merged GEMM over T*B rows once T is long (benchmarks/README.md, forensics); at
  // least 8 blocks of examples (the region's parallelism), and the blocks' sums stay
  // within 4 Mi values. The vanilla RNN only: for the gated cells (G*H columns) the
  // merged GEMMs measured 1.5-5 % faster, so Auto keeps them there.
  const int64_t nblk = ceil_div(B, example_block(B));
  return G == 1 && steps >= kExampleFuseSteps && nblk >= 8 &&
         double(nblk) * double(G * H) * double(I + H) <= 4194304.0;
}

int64_t rnn_example_sum_values(int64_t B, int64_t I, int64_t H, int64_t G) {
  return ceil_div(B, example_block(B)) * G * H * (I + H);
}

int64_t rnn_example_workspace(bool gram, int64_t steps, int64_t I, int64_t H, int64_t K,
                              int64_t G, bool apart) {
  if (gram) return (steps + 1) * (steps + 1) + steps * steps * (2 + (K > 0) + apart);
  const int64_t GH = G * H;
  int64_t m = GH * I > GH * H ? GH * I : GH * H;
  return K * H > m ? K * H : m;
}

namespace {
// sum_{s,t < n} a[s, t] * b[s, t] of two row-major matrices (lda, ldb), in float64
template <class T>
double frob_dot(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t n) {
  double s = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    const T* ar = a + r * lda;
    const T* br = b + r * ldb;
    double sr = 0.0;
    for (int64_t c = 0; c < n; ++c) sr += double(ar[c]) * double(br[c]);
    s += sr;
  }
  return s;
}

// ||sum_t v_{t,b}||^2 of examples b = b0..b1-1, rows v_{t,b} = p + t * stride + b * n (n
// values each), t < steps, in float64, into out[b]: one sweep over t reading the
// examples' rows together (contiguous), each example's sums in t order (the same numbers
// for any grouping of the examples)
template <class T>
void summed_sq(const T* p, int64_t stride, int64_t steps, int64_t n, int64_t b0, int64_t b1,
               double* acc, double* out) {
  const int64_t m = (b1 - b0) * n;
  std::memset(acc, 0, size_t(m) * sizeof(double));
  for (int64_t t = 0; t < steps; ++t) {
    const T* r = p + t * stride + b0 * n;
    for (int64_t c = 0; c < m; ++c) acc[c] += double(r[c]);
  }
  for (int64_t b = b0; b < b1; ++b) {
    const double* a = acc + (b - b0) * n;
    double s = 0.0;
    for (int64_t c = 0; c < n; ++c) s += a[c] * a[c];
    out[b] = s;
  }
}
// examples per group of the bias sums
constexpr int64_t kBiasGroup = 8;
}  // namespace

template <class T>
void rnn_per_example(const RnnExampleInputs<T>& in, ExamplePath path, Buffer<T>& ws,
                     Buffer<double>& wsd, std::vector<double>& tensor,
                     std::vector<double>& step) {
  const int64_t steps = in.steps, B = in.B, I = in.I, H = in.H, K = in.K, G = in.G;
  const int64_t GH = G * H, BH = B * H, BG = B * GH, BI = B * I, BK = B * K;
  const bool apart = in.dh != nullptr && in.dh != in.dz;
  const T* dhp = apart ? in.dh : in.dz;  // W_hh's and b_hh's rows
  const bool fuse = in.dw_ih != nullptr;  // dW as the examples' sum (the direct path)
  const bool norms = in.tensors;
  const bool gram = !fuse && (path == ExamplePath::Gram ||
                              (path == ExamplePath::Auto &&
                               rnn_example_gram(steps, I, H, K, G, apart)));
  const bool readout = norms && K > 0 && in.gy != nullptr;
  if (norms || in.steps_norms) tensor.assign(size_t(kExTensors * B), 0.0);
  if (in.steps_norms) step.assign(size_t(steps * B), 0.0);
  const auto& Kt = kernels<T>();
  const std::atomic<bool>* stop = cancel_flag();

  // a slot per thread of the region: T values, then the bias groups' float64 sums
  const bool examples = norms || fuse;
  const double work =
      double(B) * double(steps) *
      (gram ? double(steps) * double(GH * (apart ? 2 : 1) + H + I + K)
            : double(GH) * double(I + H) + double(K * H));
  GovernedRegion region(work_threads(
      examples ? (work > 1e15 ? int64_t(1e15) : int64_t(work)) : steps * BH));
  const int nt = region.threads();
  const int64_t per = examples ? rnn_example_workspace(gram, steps, I, H, K, G, apart) : 0;
  const int64_t perd = norms ? kBiasGroup * (GH > K ? GH : K) : 0;
  const int64_t eb = fuse ? example_block(B) : 1, nblk = ceil_div(B, eb);
  const int64_t HI = GH * I, HH = GH * H, nacc = fuse ? nblk * (HI + HH) : 0;
  if (ws.size() < per * nt + nacc)
    ws = Buffer<T>(per * nt + nacc, "the per-example workspace");
  if (wsd.size() < perd * nt) wsd = Buffer<double>(perd * nt, "the per-example workspace");
  T* wsp = ws.data();
  double* wsdp = wsd.data();
  double* ten = norms ? tensor.data() : nullptr;
  double* stp = in.steps_norms ? step.data() : nullptr;

#pragma omp parallel num_threads(nt)
  {
    region.enter();
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    T* slot = wsp + int64_t(tid) * per;
    double* acc = wsdp + int64_t(tid) * perd;
    // ||dL/dh_{t,i}||^2: every row of every step (contiguous rows of G)
#pragma omp for schedule(static) nowait
    for (int64_t t = 1; t <= (in.steps_norms ? steps : 0); ++t)
      if (!is_set(stop)) Kt.row_sumsq(in.g + t * BH, B, H, stp + (t - 1) * B);
    // the biases' terms: sum_t dz_{t,i} (dh_{t,i}; dL/dy_{t,i}), groups of examples
    const int64_t ngrp = (norms && (in.bias || readout)) ? ceil_div(B, kBiasGroup) : 0;
#pragma omp for schedule(static) nowait
    for (int64_t grp = 0; grp < ngrp; ++grp) {
      if (is_set(stop)) continue;
      const int64_t b0 = grp * kBiasGroup, b1 = b0 + kBiasGroup < B ? b0 + kBiasGroup : B;
      if (in.bias) {
        summed_sq(in.dz, BG, steps, GH, b0, b1, acc, ten + kExBias * B);
        if (apart)
          summed_sq(in.dh, BG, steps, GH, b0, b1, acc, ten + kExBiasHh * B);
        else
          for (int64_t b = b0; b < b1; ++b) ten[kExBiasHh * B + b] = ten[kExBias * B + b];
      }
      if (readout && in.readout_bias)
        summed_sq(in.gy, BK, steps, K, b0, b1, acc, ten + kExReadoutBias * B);
    }
    T* accs = wsp + per * nt;  // fuse: block b's sums of dW_ih (GH x I), then dW_hh (GH x H)
    // example i's own gradient of a weight: sum_t d_{t,i} a_{t,i}^T (GH x n), formed in
    // the slot (or, the first of a fused block, in the block's sum), its squared norm,
    // then added to the block's sum
    auto own = [&](const T* d, const T* a, int64_t lda, int64_t n, T* blk, bool first,
                   int row, int64_t i) {
      T* dst = blk && first ? blk : slot;
      gemm(true, false, GH, n, steps, T(1), d, BG, a, lda, T(0), dst, n);
      if (norms) ten[row * B + i] = Kt.sumsq(dst, GH * n);
      if (blk && !first)
        for (int64_t c = 0; c < GH * n; ++c) blk[c] += slot[c];
    };
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < (examples ? nblk : 0); ++blk)
    for (int64_t i = blk * eb; i < (blk + 1) * eb && i < B; ++i) {
      if (is_set(stop)) continue;
      T* acc_ih = fuse ? accs + (i / eb) * (HI + HH) : nullptr;
      T* acc_hh = fuse ? acc_ih + HI : nullptr;
      const bool first = i % eb == 0;  // a block's examples run in order on one thread
      const T* dz = in.dz + i * GH;  // row t of example i: dz + t * BG
      const T* dh = dhp + i * GH;
      const T* x = in.x + i * I;
      const T* h = in.hs + i * H;   // h_0 .. h_T
      const T* gy = readout ? in.gy + i * K : nullptr;
      if (gram) {
        const int64_t T1 = steps + 1;
        T* gh = slot;                     // (T+1)^2: h_s . h_t, s, t = 0..T
        T* gd = gh + T1 * T1;             // T^2: dz_s . dz_t
        T* gx = gd + steps * steps;       // T^2: x_s . x_t
        T* gg = gx + steps * steps;       // T^2: dy_s . dy_t (readout)
        T* gdh = apart ? gg + (K > 0 ? steps * steps : 0) : gd;  // T^2: dh_s . dh_t
        gemm(false, true, T1, T1, H, T(1), h, BH, h, BH, T(0), gh, T1);
        gemm(false, true, steps, steps, GH, T(1), dz, BG, dz, BG, T(0), gd, steps);
        if (apart) gemm(false, true, steps, steps, GH, T(1), dh, BG, dh, BG, T(0), gdh, steps);
        gemm(false, true, steps, steps, I, T(1), x, BI, x, BI, T(0), gx, steps);
        ten[kExWeightIh * B + i] = frob_dot(gd, steps, gx, steps, steps);
        // W_hh pairs dz_t (dh_t) with h_{t-1}: slots 0..T-1 of gh
        ten[kExWeightHh * B + i] = frob_dot(gdh, steps, gh, T1, steps);
        if (readout) {  // the readout pairs dy_t with h_t: slots 1..T of gh
          gemm(false, true, steps, steps, K, T(1), gy, BK, gy, BK, T(0), gg, steps);
          ten[kExReadoutWeight * B + i] = frob_dot(gg, steps, gh + T1 + 1, T1, steps);
        }
      } else {
        // example i's own gradients, one at a time in the slot
        own(dz, x, BI, I, acc_ih, first, kExWeightIh, i);
        own(dh, h, BH, H, acc_hh, first, kExWeightHh, i);
        if (readout) {
          gemm(true, false, K, H, steps, T(1), gy, BK, h + BH, BH, T(0), slot, H);
          ten[kExReadoutWeight * B + i] = Kt.sumsq(slot, K * H);
        }
      }
    }
    if (fuse) {  // dW = (dW +) sum of the blocks' sums, in block order, per chunk of values
      const int64_t chunk = 4096, nch = ceil_div(HI + HH, chunk);
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < nch; ++ch) {
        const int64_t c0 = ch * chunk, c1 = c0 + chunk < HI + HH ? c0 + chunk : HI + HH;
        for (int64_t c = c0; c < c1; ++c) {
          T s = accs[c];
          for (int64_t b = 1; b < nblk; ++b) s += accs[b * (HI + HH) + c];
          T* d = c < HI ? in.dw_ih + c : in.dw_hh + (c - HI);
          *d = in.accumulate ? T(*d + s) : s;
        }
      }
    }
    region.leave();
  }
  region.done();
  if (is_set(stop)) throw Cancelled();
}

// RnnChain::replicate_batch: the saved x, h_t and act'(z_t) of the B rows, tiled n times
// into a workspace planned for n*B rows (the backward reads nothing else of the forward).
template <class T>
void RnnChain<T>::replicate_batch(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_forward_) throw std::logic_error("replicate_batch() called before forward()");
  if (n < 1) throw std::invalid_argument("replicate_batch: n must be >= 1");
  const int64_t steps = T_, B = B_, I = cfg_.input_size, H = cfg_.hidden_size;
  if (n == 1) return;
  if (B > kBlasIntMax / n || steps > kBlasIntMax / (n * B))
    throw std::invalid_argument("replicate_batch: T*n*B rows exceed the BLAS's 32-bit limit");
  // the B rows' saved pass, then the new workspace (the old one is released by plan)
  const int64_t nx = steps * B * I, nh = (steps + 1) * B * H, nd = steps * B * H;
  std::vector<T> keep(size_t(nx + nh + nd + H));
  std::memcpy(keep.data(), X_, size_t(nx) * sizeof(T));
  std::memcpy(keep.data() + nx, HS_, size_t(nh) * sizeof(T));
  std::memcpy(keep.data() + nx + nh, D_, size_t(nd) * sizeof(T));
  std::memcpy(keep.data() + nx + nh + nd, bias_, size_t(H) * sizeof(T));
  const int fwd = fwd_nonfinite_;
  const NonfiniteStage stage = fwd_stage_;
  plan(steps, n * B);  // has_forward_ false until the copies are in
  const int64_t nB = n * B;
  auto tile = [&](const T* src, T* dst, int64_t slots, int64_t w) {
    for (int64_t t = 0; t < slots; ++t)
      for (int64_t c = 0; c < n; ++c)
        std::memcpy(dst + (t * nB + c * B) * w, src + t * B * w, size_t(B * w) * sizeof(T));
  };
  tile(keep.data(), X_, steps, I);
  tile(keep.data() + nx, HS_, steps + 1, H);
  tile(keep.data() + nx + nh, D_, steps, H);
  std::memcpy(bias_, keep.data() + nx + nh + nd, size_t(H) * sizeof(T));
  std::fill(fabs_.begin(), fabs_.end(), 0.0);  // mean |h_t| of the copies: not kept
  fwd_nonfinite_ = fwd;
  fwd_stage_ = stage;
  has_forward_ = true;
}

template void RnnChain<float>::replicate_batch(int64_t);
template void RnnChain<double>::replicate_batch(int64_t);

template void rnn_per_example<float>(const RnnExampleInputs<float>&, ExamplePath, Buffer<float>&,
                                     Buffer<double>&, std::vector<double>&,
                                     std::vector<double>&);
template void rnn_per_example<double>(const RnnExampleInputs<double>&, ExamplePath,
                                      Buffer<double>&, Buffer<double>&, std::vector<double>&,
                                      std::vector<double>&);

}  // namespace gradchain
