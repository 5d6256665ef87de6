// recurrent.cpp — the parts the recurrent drivers (rnn.cpp, gated.cpp) share: the layout,
// the shared workspace's planning steps, the readout (forward and backward), the merged
// weight-gradient GEMMs, the forward non-finite scan and the report's global norm.
//
// Every loop here is a fixed partition of the shape (gemm_split, row blocks of kRowBlock)
// and every reduction runs in block order, so the numbers never depend on the thread count.
#include "gradchain/recurrent.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gemm_block.h"
#include "gradchain/dispatch.h"
#include "gradchain/memory.h"
#include "gradchain/parallel.h"
#include "gradchain/report.h"

namespace gradchain {

using detail::gemm_block;

template <class T>
RecurrentChain<T>::RecurrentChain(const char* what, int gates, int64_t I, int64_t H, int64_t K,
                                  bool bias, int max_log2)
    : Base([this] { return describe(); }, false), I_(I), H_(H), K_(K), GH_(0), what_(what) {
  const int64_t lim = int64_t(1) << max_log2;
  const std::string range = std::to_string(max_log2) + "]";
  if (I < 1 || I > lim) throw std::invalid_argument("input_size must be in [1, 2^" + range);
  if (H < 1 || H > lim) throw std::invalid_argument("hidden_size must be in [1, 2^" + range);
  if (K < 0 || K > lim) throw std::invalid_argument("output_size must be in [0, 2^" + range);
  // (G*H x 2^max_log2 at most: no tensor can overflow the offsets)
  GH_ = int64_t(gates) * H;
  auto add = [this](const char* name, std::vector<int64_t> shape) {
    return this->add_tensor(name, std::move(shape), 0);
  };
  w_ih_ = add("weight_ih_l0", {GH_, I});
  w_hh_ = add("weight_hh_l0", {GH_, H});
  if (bias) {
    b_ih_ = add("bias_ih_l0", {GH_});
    b_hh_ = add("bias_hh_l0", {GH_});
  }
  if (K > 0) {
    w_out_ = add("readout.weight", {K, H});
    if (bias) b_out_ = add("readout.bias", {K});
  }
  this->allocate_tensors("the parameters and gradients of");
}

template <class T>
std::string RecurrentChain<T>::describe() const {
  return std::string(what_) + " with input_size=" + std::to_string(I_) +
         ", hidden_size=" + std::to_string(H_) + ", output_size=" + std::to_string(K_) + " (" +
         (sizeof(T) == 4 ? "float32" : "float64") + ")";
}

template <class T>
void RecurrentChain<T>::begin_plan(int64_t steps, int64_t B) {
  if (steps > kBlasIntMax / B)  // the merged GEMMs run over all T*B rows
    throw std::invalid_argument("T*B = " + std::to_string(steps) + "*" + std::to_string(B) +
                                " rows exceed the BLAS's 32-bit limit (2^31-1)");
  has_forward_ = false;
  T_ = B_ = 0;
  // the old workspace goes first: the peak is the new one, not old + new
  ws_ = Buffer<T>();
  part_ = Buffer<double>();
}

template <class T>
void RecurrentChain<T>::plan_failed(int64_t steps, int64_t B, double bytes) {
  ws_ = Buffer<T>();
  part_ = Buffer<double>();
  throw AllocError(alloc_message("the workspace for a sequence of T=" + std::to_string(steps) +
                                     " steps, batch " + std::to_string(B) + " of " + describe(),
                                 bytes));
}

template <class T>
int64_t RecurrentChain<T>::pass_bytes_for(int64_t steps, int64_t B, int64_t fresh, int64_t held,
                                          int64_t slot, int64_t work) const {
  int64_t need = 0;
  if (steps != T_ || B != B_) need = fresh > held ? fresh - held : 0;
  return need + detail::pack_scratch_bytes(pack_, slot, max_threads_for(work));
}

template <class T>
int64_t RecurrentChain<T>::slot_for(int64_t steps, int64_t B) const {
  int64_t maxk = I_ > GH_ ? I_ : GH_, maxn = maxk;
  if (K_ > maxk) maxk = maxn = K_;
  if (steps * B > maxk) maxk = steps * B;
  return detail::pack_slot<T>(maxk, maxn);
}

template <class T>
void RecurrentChain<T>::load_inputs(const T* x, const T* h0, int64_t steps, int64_t B) {
  std::memcpy(X_, x, size_t(steps * B * I_) * sizeof(T));
  if (h0)
    std::memcpy(HS_, h0, size_t(B * H_) * sizeof(T));
  else
    std::memset(HS_, 0, size_t(B * H_) * sizeof(T));
}

template <class T>
void RecurrentChain<T>::load_grad_hs(const T* grad_hs, T* G, bool by_step) const {
  const int64_t BH = B_ * H_, TBH = T_ * BH;
  if (grad_hs && by_step)  // the last step's; the others in the backward's loop
    std::memcpy(G + TBH, grad_hs + TBH - BH, size_t(BH) * sizeof(T));
  else if (grad_hs)
    std::memcpy(G + BH, grad_hs, size_t(TBH) * sizeof(T));
  else
    std::memset(G + BH, 0, size_t(TBH) * sizeof(T));
  std::memset(G, 0, size_t(BH) * sizeof(T));
}

template <class T>
void RecurrentChain<T>::readout_forward(T* ys) {
  const auto& Kt = kernels<T>();
  const int64_t H = H_, K = K_, TB = T_ * B_;
  const GemmSplit go = gemm_split(TB, K, H);
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < go.count; ++blk)
    if (!stopping())  // cancelled: skip the rest (the pass will be thrown away)
      gemm_block(go, blk, false, true, TB, K, H, HS_ + B_ * H, H, params_.data() + w_out_, H,
                 T(0), ys, K, packs());
  const T* bo = b_out_ >= 0 ? params_.data() + b_out_ : nullptr;
  const int64_t nrb_all = ceil_div(TB, kRowBlock);
#pragma omp for schedule(static)
  for (int64_t rb = 0; rb < nrb_all; ++rb)
    part_.data()[rb] = Kt.add_bias(ys + rb * kRowBlock * K, bo, rows_in_block(rb, TB), K);
}

template <class T>
void RecurrentChain<T>::readout_backward(const T* grad_ys, T* G, bool accumulate,
                                         double& ss_w_out, double& ss_b_out) {
  const auto& Kt = kernels<T>();
  const int64_t H = H_, K = K_, TB = T_ * B_;
  const int64_t nrb_all = ceil_div(TB, kRowBlock);
  T* grads = grads_.data();
  double* part = part_.data();
  T* dWo = grads + w_out_;
  if (grad_ys) {
    // dW_out = gy^T h (K x H over all T*B rows), G += gy W_out
    const GemmSplit sw = gemm_split(K, H, TB);
    const GemmSplit sg = gemm_split(TB, H, K);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < sw.count + sg.count; ++i) {
      if (stopping()) continue;
      if (i < sw.count)
        gemm_block(sw, i, true, false, K, H, TB, grad_ys, K, HS_ + B_ * H, H,
                   accumulate ? T(1) : T(0), dWo, H, packs());
      else
        gemm_block(sg, i - sw.count, false, false, TB, H, K, grad_ys, K,
                   params_.data() + w_out_, H, T(1), G + B_ * H, H, packs());
    }
    if (b_out_ >= 0) {
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb_all; ++rb) {
        std::memset(part + rb * K, 0, size_t(K) * sizeof(double));
        Kt.col_sum(grad_ys + rb * kRowBlock * K, rows_in_block(rb, TB), K, part + rb * K);
      }
#pragma omp single
      ss_b_out = reduce_store(part, nrb_all, K, grads + b_out_, accumulate);
    }
  } else {
#pragma omp single
    {  // no readout gradient: its parameters get zero (or keep theirs when accumulating)
      if (!accumulate) {
        std::memset(dWo, 0, size_t(K * H) * sizeof(T));
        if (b_out_ >= 0) std::memset(grads + b_out_, 0, size_t(K) * sizeof(T));
      }
      ss_w_out = Kt.sumsq(dWo, K * H);
      if (b_out_ >= 0) ss_b_out = Kt.sumsq(grads + b_out_, K);
    }
  }
}

template <class T>
void RecurrentChain<T>::weight_grads(const T* DZ, const T* DH, T* dx, bool accumulate,
                                     bool weights) {
  const int64_t I = I_, H = H_, GH = GH_, TB = T_ * B_;
  T* grads = grads_.data();
  const T* W_ih = params_.data() + w_ih_;
  const GemmSplit s1 = gemm_split(GH, I, TB);
  const GemmSplit s2 = gemm_split(GH, H, TB);
  const GemmSplit s3 = gemm_split(TB, I, GH);
  const T beta = accumulate ? T(1) : T(0);
  const int64_t nw = weights ? s1.count + s2.count : 0;
#pragma omp for schedule(dynamic, 1)
  for (int64_t i = 0; i < nw + (dx ? s3.count : 0); ++i) {
    if (stopping()) continue;
    if (i >= nw)
      gemm_block(s3, i - nw, false, false, TB, I, GH, DZ, GH, W_ih, I, T(0), dx, I, packs());
    else if (i < s1.count)
      gemm_block(s1, i, true, false, GH, I, TB, DZ, GH, X_, I, beta, grads + w_ih_, I, packs());
    else
      gemm_block(s2, i - s1.count, true, false, GH, H, TB, DH, GH, HS_, H, beta, grads + w_hh_,
                 H, packs());
  }
}

template <class T>
int RecurrentChain<T>::scan_forward(const double* checks, int64_t stride) const {
  for (int64_t t = 1; t <= T_; ++t)
    for (int64_t rb = 0; rb < nrb_; ++rb)
      if (std::isnan(checks[((t - 1) * nrb_ + rb) * stride])) return int(t);
  if (K_ > 0) {
    const int64_t nrb_all = ceil_div(T_ * B_, kRowBlock);
    for (int64_t rb = 0; rb < nrb_all; ++rb)
      if (std::isnan(part_.data()[rb])) return int(T_ + 1);
  }
  return -1;
}

template <class T>
void RecurrentChain<T>::finish_global_norm(RecurrentReport& rep) const {
  std::vector<double> all = {rep.weight_ih, rep.weight_hh};
  if (b_ih_ >= 0) {
    all.push_back(rep.bias_ih);
    all.push_back(rep.bias_hh);
  }
  if (K_ > 0) {
    all.push_back(rep.readout_weight);
    if (b_out_ >= 0) all.push_back(rep.readout_bias);
  }
  rep.global_norm = combine_norms(all);
}

template <class T>
NonfiniteStage RecurrentChain<T>::diagnose_readout() const {
  const T* P = this->params_.data();
  if (any_nonfinite(P + w_out_, K_ * H_) || (b_out_ >= 0 && any_nonfinite(P + b_out_, K_)))
    return NonfiniteStage::Parameter;
  return NonfiniteStage::Linear;
}

template <class T>
bool RecurrentChain<T>::cell_params_nonfinite() const {
  const T* P = this->params_.data();
  return any_nonfinite(P + w_ih_, GH_ * I_) || any_nonfinite(P + w_hh_, GH_ * H_) ||
         (b_ih_ >= 0 && (any_nonfinite(P + b_ih_, GH_) || any_nonfinite(P + b_hh_, GH_)));
}

template class RecurrentChain<float>;
template class RecurrentChain<double>;

}  // namespace gradchain
