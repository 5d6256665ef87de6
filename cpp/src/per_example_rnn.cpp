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

bool rnn_example_gram(int64_t steps, int64_t I, int64_t H, int64_t K) {
  // Gram: the T x T products of dz (H), x (I), h (H) and dL/dy (K); direct: the H x I,
  // H x H and K x H products over T (multiply-adds per example, the bias terms alike)
  const double t = double(steps);
  const double gram = t * t * double(2 * H + I + K);
  const double direct = t * double(H) * double(I + H + K);
  return gram < direct;
}

bool rnn_example_fuses(int path, int64_t steps, int64_t I, int64_t H, int64_t K) {
  (void)steps, (void)I, (void)H, (void)K;
  return path == int(ExamplePath::DirectSum);
}

namespace {
// examples per block of the fused dW sums (a function of B only): at most 16 blocks
inline int64_t example_block(int64_t B) { return B <= 64 ? 4 : (B + 15) / 16; }
}  // namespace

int64_t rnn_example_workspace(bool gram, int64_t steps, int64_t I, int64_t H, int64_t K) {
  if (gram) return (steps + 1) * (steps + 1) + steps * steps * (K > 0 ? 3 : 2);
  int64_t m = H * I > H * H ? H * I : H * H;
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

// ||sum_t v_t||^2 of rows v_t = p + t * stride (n values each), t < steps, in float64
template <class T>
double summed_sq(const T* p, int64_t stride, int64_t steps, int64_t n, double* acc) {
  std::memset(acc, 0, size_t(n) * sizeof(double));
  for (int64_t t = 0; t < steps; ++t) {
    const T* r = p + t * stride;
    for (int64_t c = 0; c < n; ++c) acc[c] += double(r[c]);
  }
  double s = 0.0;
  for (int64_t c = 0; c < n; ++c) s += acc[c] * acc[c];
  return s;
}
}  // namespace

template <class T>
void rnn_per_example(const RnnExampleInputs<T>& in, ExamplePath path, Buffer<T>& ws,
                     Buffer<double>& wsd, std::vector<double>& tensor,
                     std::vector<double>& step) {
  const int64_t steps = in.steps, B = in.B, I = in.I, H = in.H, K = in.K;
  const int64_t BH = B * H, BI = B * I, BK = B * K;
  const bool gram = path == ExamplePath::Gram ||
                    (path == ExamplePath::Auto && rnn_example_gram(steps, I, H, K));
  const bool readout = K > 0 && in.gy != nullptr;
  tensor.assign(size_t(kExTensors * B), 0.0);
  step.assign(size_t(steps * B), 0.0);
  const auto& Kt = kernels<T>();
  const std::atomic<bool>* stop = cancel_flag();

  // a slot per thread of the region: T values, then H + K float64 accumulators
  const double work = double(B) * double(steps) *
                      (gram ? double(steps) * double(2 * H + I + K) : double(H) * double(I + H + K));
  GovernedRegion region(work_threads(
      in.tensors ? (work > 1e15 ? int64_t(1e15) : int64_t(work)) : steps * BH));
  const int nt = region.threads();
  const int64_t per = in.tensors ? rnn_example_workspace(gram, steps, I, H, K) : 0;
  const int64_t perd = in.tensors ? H + K : 0;
  const bool fuse = in.tensors && !gram && in.dw_ih != nullptr;
  const int64_t eb = fuse ? example_block(B) : 1, nblk = ceil_div(B, eb);
  const int64_t HI = H * I, HH = H * H, nacc = fuse ? nblk * (HI + HH) : 0;
  if (ws.size() < per * nt + nacc)
    ws = Buffer<T>(per * nt + nacc, "the per-example workspace");
  if (wsd.size() < perd * nt) wsd = Buffer<double>(perd * nt, "the per-example workspace");
  T* wsp = ws.data();
  double* wsdp = wsd.data();
  double* ten = tensor.data();
  double* stp = step.data();

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
    for (int64_t t = 1; t <= steps; ++t)
      if (!is_set(stop)) Kt.row_sumsq(in.g + t * BH, B, H, stp + (t - 1) * B);
    T* accs = wsp + per * nt;  // fuse: block b's sums of dW_ih (H x I), then dW_hh (H x H)
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < (in.tensors ? nblk : 0); ++blk)
    for (int64_t i = blk * eb; i < (blk + 1) * eb && i < B; ++i) {
      if (is_set(stop)) continue;
      T* acc_ih = fuse ? accs + (i / eb) * (HI + HH) : nullptr;
      T* acc_hh = fuse ? acc_ih + HI : nullptr;
      const bool first = i % eb == 0;  // a block's examples run in order on one thread
      const T* dz = in.dz + i * H;  // row t of example i: dz + t * BH
      const T* x = in.x + i * I;
      const T* h = in.hs + i * H;   // h_0 .. h_T
      const T* gy = readout ? in.gy + i * K : nullptr;
      if (in.bias) ten[kExBias * B + i] = summed_sq(dz, BH, steps, H, acc);
      if (readout && in.readout_bias)
        ten[kExReadoutBias * B + i] = summed_sq(gy, BK, steps, K, acc + H);
      if (gram) {
        const int64_t T1 = steps + 1;
        T* gh = slot;                     // (T+1)^2: h_s . h_t, s, t = 0..T
        T* gd = gh + T1 * T1;             // T^2: dz_s . dz_t
        T* gx = gd + steps * steps;       // T^2: x_s . x_t
        T* gg = gx + steps * steps;       // T^2: dy_s . dy_t (readout)
        gemm(false, true, T1, T1, H, T(1), h, BH, h, BH, T(0), gh, T1);
        gemm(false, true, steps, steps, H, T(1), dz, BH, dz, BH, T(0), gd, steps);
        gemm(false, true, steps, steps, I, T(1), x, BI, x, BI, T(0), gx, steps);
        ten[kExWeightIh * B + i] = frob_dot(gd, steps, gx, steps, steps);
        // W_hh pairs dz_t with h_{t-1}: slots 0..T-1 of gh
        ten[kExWeightHh * B + i] = frob_dot(gd, steps, gh, T1, steps);
        if (readout) {  // the readout pairs dy_t with h_t: slots 1..T of gh
          gemm(false, true, steps, steps, K, T(1), gy, BK, gy, BK, T(0), gg, steps);
          ten[kExReadoutWeight * B + i] = frob_dot(gg, steps, gh + T1 + 1, T1, steps);
        }
      } else {
        // example i's own gradients, one at a time in the slot
        gemm(true, false, H, I, steps, T(1), dz, BH, x, BI, T(0), fuse && first ? acc_ih : slot,
             I);
        if (fuse && first) {
          ten[kExWeightIh * B + i] = Kt.sumsq(acc_ih, HI);
        } else {
          ten[kExWeightIh * B + i] = Kt.sumsq(slot, HI);
          if (fuse)
            for (int64_t c = 0; c < HI; ++c) acc_ih[c] += slot[c];
        }
        gemm(true, false, H, H, steps, T(1), dz, BH, h, BH, T(0), fuse && first ? acc_hh : slot,
             H);
        if (fuse && first) {
          ten[kExWeightHh * B + i] = Kt.sumsq(acc_hh, HH);
        } else {
          ten[kExWeightHh * B + i] = Kt.sumsq(slot, HH);
          if (fuse)
            for (int64_t c = 0; c < HH; ++c) acc_hh[c] += slot[c];
        }
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
