// rnn_step_epilogue.cpp — issue 13: the RNN backward step's epilogue alone, as rnn-long-narrow
// calls it (B 16, H 64, row blocks of 8; T 64 so the buffers stay in L2: the compute, not
// the memory), report off (bwd_plain), main's health pass (bwd_plain_health) and the RNN's
// (bwd_step_health), interleaved, thread CPU time. After an editable build:
//   g++ -O2 -std=c++17 -fopenmp -Icpp/include benchmarks/rnn_step_epilogue.cpp
//     build/editable/libgradchain_core.a -L$OB -lscipy_openblas -Wl,-rpath,$OB -o /tmp/mb
// with OB the scipy_openblas32 wheel's lib directory (python -c 'import scipy_openblas32 as s;
// print(s.get_lib_dir())').
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>
#include "gradchain/dispatch.h"
#include "gradchain/kernels.h"
using namespace gradchain;
static double now() { timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
int main() {
  const int64_t T = 64, B = 16, H = 64, sr = 8, nrb = 2, BH = B * H;
  std::vector<float> G((T + 1) * BH), D(T * BH), DZ(T * BH), HD(T * nrb * H);
  std::vector<double> part(nrb * H), blk(T * nrb), hc(3 * T * nrb);
  std::vector<uint64_t> bits(2 * T * nrb);
  std::mt19937 rng(1); std::normal_distribution<float> nd;
  for (auto& v : G) v = nd(rng);
  for (auto& v : D) v = 1.0f - std::tanh(nd(rng)) * std::tanh(nd(rng));
  const auto& K = kernels<float>();
  std::printf("isa %s\n", K.isa);
  auto run = [&](int mode) {
    double t0 = now();
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * sr;
      double* db = part.data() + rb * H;
      std::memset(db, 0, H * sizeof(double));
      for (int64_t t = T; t >= 1; --t) {
        float* dzt = DZ.data() + (t - 1) * BH + r0 * H;
        const float* g = G.data() + t * BH + r0 * H;
        const float* d = D.data() + (t - 1) * BH + r0 * H;
        const size_t hb = size_t((t - 1) * nrb + rb);
        if (mode == 0) {
          blk[hb] = K.bwd_plain(g, d, 1.0f, false, false, dzt, db, sr, H);
        } else if (mode == 1) {
          GradHealth<float> h; h.dmax = HD.data() + hb * H; std::fill(h.dmax, h.dmax + H, 0.f);
          blk[hb] = K.bwd_plain_health(g, d, 1.0f, false, dzt, db, sr, H, &h);
          hc[3 * hb] = h.zeros; hc[3 * hb + 1] = h.subnormals; hc[3 * hb + 2] = h.dz_check;
        } else {
          StepHealth<float> h; h.live = bits.data() + 2 * hb; h.unsat = h.live + 1; h.thr = 1e-3f;
          blk[hb] = K.bwd_step_health(g, d, 1.0f, false, dzt, db, sr, H, &h);
          hc[2 * hb] = h.zeros; hc[2 * hb + 1] = h.subnormals;
        }
      }
    }
    return now() - t0;
  };
  const char* names[3] = {"plain", "main health", "new health"};
  std::vector<double> best(3, 1e9), tot(3, 0);
  std::vector<std::vector<double>> all(3);
  for (int it = 0; it < 3000; ++it)
    for (int m0 = 0; m0 < 3; ++m0) { int m = (m0 + it) % 3; double s = run(m); all[m].push_back(s); }
  for (int m = 0; m < 3; ++m) {
    auto v = all[m]; std::sort(v.begin(), v.end());
    std::printf("%-12s min %.1f us  median %.1f us per 128 calls (x64 = one pass)\n", names[m], 1e6 * v[0], 1e6 * v[v.size() / 2]);
  }
}
