// governor.cpp — the thread governor (gradchain/governor.h): the policy as a pure state
// machine, and the process-wide state behind a lock.
#include "gradchain/governor.h"

#include <pthread.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

#include "gradchain/dispatch.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gradchain {

// ---------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------
GovernorState governor_initial(int setting, const GovernorParams& p) {
  GovernorState st;
  st.allowance = setting < 1 ? 1 : setting;
  st.probe_interval = p.probe_first;
  return st;
}

int governor_threads(GovernorState& st, const GovernorParams& p, int setting, int work_cap,
                     double now, bool* probe) {
  (void)p;
  *probe = false;
  const int cap = std::max(1, std::min(setting, work_cap));
  const int a = std::max(1, std::min(st.allowance, setting));
  if (a < cap && !st.probing && now >= st.next_probe) {
    st.probing = true;
    *probe = true;
    return a + 1;
  }
  return std::min(a, cap);
}

void governor_learn(GovernorState& st, const GovernorParams& p, int setting, int nt, bool probe,
                    double wall, const double* cpu, const unsigned char* preempted,
                    double now) {
  if (probe) st.probing = false;
  if (nt < 2 || !(wall >= p.min_wall)) return;  // too short to tell (a probe runs again)
  if (!probe && nt != std::min(st.allowance, setting)) return;  // small work: below the allowance
  int starved = 0;
  double sum = 0.0;
  for (int i = 0; i < nt; ++i) {
    sum += cpu[i];
    if (!(cpu[i] >= p.starved * wall) && (!preempted || preempted[i])) ++starved;
  }
  const double eff = sum / wall;
  ++st.regions;
  if (starved > 0) ++st.starved_regions;
  st.last_threads = nt;
  st.last_wall = wall;
  st.last_effective = eff;
  st.last_starved = starved;
  if (probe) {
    ++st.probes;
    if (starved == 0) {  // one thread more ran unhindered: keep it, and try the next soon
      ++st.probe_successes;
      st.allowance = nt;
      if (nt >= setting) st.lowered = false;
      st.history = 0;
      st.history_len = 0;
      st.probe_interval = p.probe_first;
      st.next_probe = now + p.probe_first;
    } else {  // back off: twice the interval, and at least probe_cost_factor x this probe
      st.probe_interval = std::min(2.0 * st.probe_interval, p.probe_max);
      st.next_probe = now + std::max(st.probe_interval, p.probe_cost_factor * wall);
    }
    return;
  }
  const int window = std::max(1, std::min(p.window, 31));
  st.history = ((st.history << 1) | (starved > 0 ? 1u : 0u)) & ((1u << window) - 1u);
  if (st.history_len < window) ++st.history_len;
  int count = 0;
  for (unsigned h = st.history; h; h &= h - 1) ++count;
  if (count < p.confirm) return;
  // Confirmed: keep the threads that were not starved, at most the effective cores.
  int keep = nt - starved;
  const double fe = std::floor(eff);
  if (fe < double(keep)) keep = int(fe);
  st.allowance = std::max(1, std::min(keep, nt - 1));
  st.lowered = true;
  ++st.drops;
  st.history = 0;
  st.history_len = 0;
  st.probe_interval = p.probe_first;
  st.next_probe = now + p.probe_first;
}

// ---------------------------------------------------------------------------------------
// The process-wide governor
// ---------------------------------------------------------------------------------------
namespace {

const GovernorParams kParams{};

// A spinning lock (held for a few hundred nanoseconds per pass): unlike a mutex it can be
// reset in a child after fork, whatever another thread of the parent was doing.
std::atomic<bool> g_lock{false};
struct Guard {
  Guard() {
    while (g_lock.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  }
  ~Guard() { g_lock.store(false, std::memory_order_release); }
};

std::atomic<bool> g_adaptive{true};
bool g_init = false;
bool g_hold = false;  // governor_force(..., hold): the allowance stays, nothing is learnt
std::atomic<int> g_force_bail{0};  // governor_force_bail
GovernorState g_state;

GovernorState& state() {  // with the lock held
  if (!g_init) {
    g_state = governor_initial(get_num_threads(), kParams);
    g_init = true;
  }
  return g_state;
}

// fork: the child starts from a clean governor (another thread of the parent may have held
// the lock or had a probe in flight); whether it may use threads at all is dispatch.cpp's.
void governor_after_fork_child() {
  g_lock.store(false);
  g_init = false;
  g_hold = false;
}

[[maybe_unused]] const bool g_atfork_registered = [] {
  return pthread_atfork(nullptr, nullptr, governor_after_fork_child) == 0;
}();

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

int team_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace

double monotonic_seconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double thread_cpu_seconds(long* preemptions) {
  rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) != 0) {
    if (preemptions) *preemptions = 0;
    return 0.0;
  }
  if (preemptions) *preemptions = ru.ru_nivcsw;
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

void governor_force_bail(int k) { g_force_bail.store(k < 0 ? 0 : k); }

bool adaptive_threads() { return g_adaptive.load(std::memory_order_relaxed); }
void set_adaptive_threads(bool on) { g_adaptive.store(on); }

void governor_reset() {
  Guard g;
  g_init = false;
  g_hold = false;
}

void governor_setting_changed(int old_setting, int new_setting) {
  Guard g;
  if (g_hold) {  // a test's forced allowance ends with any new setting
    g_init = false;
    g_hold = false;
    return;
  }
  if (!g_init || new_setting == old_setting) return;
  // What was learnt is about the machine, not the setting: a busy machine stays busy when
  // the count changes (a thread sweep, a library that sets its count per call). An
  // allowance that was not lowered follows the new setting; a lowered one stays, and the
  // probes (on their schedule) raise it again when cores free up.
  GovernorState& st = g_state;
  if (!st.lowered) st.allowance = std::max(1, new_setting);
  st.history = 0;
  st.history_len = 0;
}

GovernorState governor_snapshot() {
  Guard g;
  return state();
}

void governor_force(int allowance, double probe_after, bool hold) {
  const int setting = get_num_threads();
  const double now = monotonic_seconds();
  Guard g;
  GovernorState& st = state();
  st.allowance = std::max(1, std::min(allowance, setting));
  st.lowered = st.allowance < setting;
  st.history = 0;
  st.history_len = 0;
  st.probe_interval = kParams.probe_first;
  st.next_probe = now + probe_after;
  g_hold = hold;
}

int pass_threads(int work_cap) {
  const int setting = get_num_threads();
  int nt = std::max(1, std::min(setting, work_cap));
  if (nt > 1 && adaptive_threads()) {
    Guard g;
    nt = std::max(1, std::min(nt, state().allowance));
  }
  note_region_threads(nt);
  return nt;
}

GovernedRegion::GovernedRegion(int work_cap) {
  setting_ = get_num_threads();
  const int cap = std::max(1, std::min(setting_, work_cap));
  if (cap > 1 && adaptive_threads()) {
    const double now = monotonic_seconds();
    Guard g;
    if (g_hold) {
      nt_ = std::max(1, std::min(cap, state().allowance));
    } else {
      nt_ = governor_threads(state(), kParams, setting_, cap, now, &probe_);
      measure_ = true;
    }
  } else {
    nt_ = cap;
  }
  note_region_threads(nt_);
  if (nt_ > 1 && measure_) {
    cpu0_.assign(size_t(nt_), 0.0);
    cpu1_.assign(size_t(nt_), 0.0);
    ivcsw0_.assign(size_t(nt_), 0);
    ivcsw1_.assign(size_t(nt_), 0);
    clock_.assign(size_t(nt_), clockid_t());
    has_clock_.assign(size_t(nt_), 0);
  } else {
    measure_ = false;
  }
}

GovernedRegion::~GovernedRegion() {
  if (probe_ && !finished_) {  // the pass threw before done(): let a later pass probe
    Guard g;
    state().probing = false;
  }
}

void GovernedRegion::enter() {
  if (!measure_) return;
  const int i = team_index();
  if (i == 0) {
    team_ = team_size();
    t0_ = monotonic_seconds();
    next_check_ = t0_ + kParams.bail_after;
  }
  if (i < nt_) {
    has_clock_[size_t(i)] = pthread_getcpuclockid(pthread_self(), &clock_[size_t(i)]) == 0;
    cpu0_[size_t(i)] = thread_cpu_seconds(&ivcsw0_[size_t(i)]);
  }
}

void GovernedRegion::leave() {
  if (!measure_) return;
  const int i = team_index();
  if (i < nt_) cpu1_[size_t(i)] = thread_cpu_seconds(&ivcsw1_[size_t(i)]);
}

bool GovernedRegion::starving() {
  if (!measure_ || starved_) return false;
  const int force = g_force_bail.load(std::memory_order_relaxed);
  if (force > 0) {
    if (++checks_ < force) return false;
    starved_ = forced_ = true;
    return true;
  }
  const double now = monotonic_seconds();
  if (now < next_check_) return false;
  next_check_ = now + kParams.bail_check;
  const double wall = now - t0_;
  const int nt = team_ > 0 && team_ < nt_ ? team_ : nt_;
  std::vector<double> used(size_t(nt), 0.0);
  bool any = false;
  for (int i = 0; i < nt; ++i) {
    timespec ts;
    if (!has_clock_[size_t(i)] || clock_gettime(clock_[size_t(i)], &ts) != 0)
      return false;  // no clock for a thread: no bail-out
    used[size_t(i)] = double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec) - cpu0_[size_t(i)];
    any = any || used[size_t(i)] < kParams.bail_starved * wall;
  }
  if (!any) return false;
  starved_ = true;
  bail_wall_ = wall;
  bail_cpu_ = std::move(used);
  return true;
}

void GovernedRegion::done(bool bailed) {
  finished_ = true;
  if (!measure_ || forced_) {
    if (probe_) {
      Guard g;
      state().probing = false;
    }
    return;
  }
  const double now = monotonic_seconds();
  // OpenMP may have given fewer threads than asked: teach with the team that ran
  const int nt = team_ > 0 && team_ < nt_ ? team_ : nt_;
  std::vector<double> cpu(static_cast<size_t>(nt));
  std::vector<unsigned char> pre(static_cast<size_t>(nt), 1);
  double wall = now - t0_;
  if (bailed && starved_) {  // the evidence starving() acted on
    wall = bail_wall_;
    cpu = bail_cpu_;
  } else {
    for (int i = 0; i < nt; ++i) {
      cpu[size_t(i)] = cpu1_[size_t(i)] - cpu0_[size_t(i)];
      pre[size_t(i)] = ivcsw1_[size_t(i)] > ivcsw0_[size_t(i)];
    }
  }
  Guard g;
  if (setting_ != get_num_threads()) {  // set_num_threads ran meanwhile: nothing to learn
    if (probe_) state().probing = false;
    return;
  }
  governor_learn(state(), kParams, setting_, nt, probe_, wall, cpu.data(), pre.data(), now);
}

}  // namespace gradchain
