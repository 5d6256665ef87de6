// gradchain/governor.h — the thread governor: how many threads the next pass may use on a
// machine that other processes share.
//
// Every multi-threaded pass region measures itself: each thread its own CPU time and its
// involuntary context switches over the region (getrusage(RUSAGE_THREAD)), the master the
// region's wall time. A thread that the scheduler preempted and that got less than
// `starved` of the wall shared its core with something else (another process, or more
// threads than cores). When regions at the allowed count are starved repeatedly
// (`confirm` of the last `window` regions that taught), the allowance drops to the threads
// that were not starved (at most the effective cores, sum(cpu) / wall); while it is below
// the setting, a pass now and then runs on one thread more (a probe) and raises the
// allowance when none of its threads was starved. Probes back off (the interval doubles
// after each failed one, and is never shorter than probe_cost_factor times the failed
// probe's wall, so a probe costs at most a few per cent), and start again at probe_first
// after a success or a drop.
//
// The policy (GovernorState, governor_threads, governor_learn) is a pure state machine of
// the measurements and a clock, so the tests drive it directly (the bindings' test hooks);
// the process-wide governor is one such state behind a lock. Results never depend on it:
// every partition of the core follows the shape, never the thread count (parallel.h).
#pragma once

#include <time.h>

#include <cstdint>
#include <vector>

namespace gradchain {

struct GovernorParams {
  double min_wall = 2e-4;         // s: shorter regions teach nothing
  double starved = 0.75;          // a thread with cpu < starved * wall was starved
  int window = 3;                 // the last `window` regions that taught...
  int confirm = 2;                // ...of which `confirm` starved: contention confirmed
  double probe_first = 0.1;       // s: the first probe after a drop or a success
  double probe_max = 4.0;         // s: the longest probe interval
  double probe_cost_factor = 20;  // the next probe waits at least this x a failed probe's wall
  double bail_after = 1e-3;       // s: a region is judged for a bail-out after this long,
  double bail_check = 2.5e-4;     // s: at most this often,
  double bail_starved = 0.6;      // and bails when a thread got less than this of the wall
};

struct GovernorState {
  int allowance = 1;              // threads a pass may use now (<= the setting)
  unsigned history = 0;           // bit i: the i-th latest region that taught was starved
  int history_len = 0;            // regions in `history` (at most window)
  double probe_interval = 0.1;    // s: the current back-off
  double next_probe = 0.0;        // monotonic s: no probe before this
  bool probing = false;           // a probe region is running
  bool lowered = false;           // the allowance is below a setting because of contention
  // counters and the last measurement, for thread_policy() and the tests
  uint64_t regions = 0;           // regions that taught (at least min_wall, 2+ threads)
  uint64_t starved_regions = 0;   // of which had a starved thread
  uint64_t drops = 0;             // allowance lowered
  uint64_t probes = 0;            // probes that taught
  uint64_t probe_successes = 0;   // of which raised the allowance
  int last_threads = 0;           // the last region that taught: its threads,
  double last_wall = 0.0;         // wall (s),
  double last_effective = 0.0;    // sum of its threads' CPU time / wall,
  int last_starved = 0;           // and how many of its threads were starved
};

// A fresh state for `setting` threads: the allowance is the setting, nothing learnt.
GovernorState governor_initial(int setting, const GovernorParams& p);

// Threads for a pass that `setting`, the state and the work (`work_cap` threads at most)
// allow at monotonic time `now`; sets *probe (and st.probing) when this pass is a probe.
int governor_threads(GovernorState& st, const GovernorParams& p, int setting, int work_cap,
                     double now, bool* probe);

// After a region of `nt` threads that took `wall` seconds, in which thread i used cpu[i]
// seconds and was preempted[i] (the scheduler took its core at least once; null: every
// thread was) (probe: it was the one governor_threads marked). Thread i was starved when
// preempted and below `starved` of the wall: a thread that slept while it waited for the
// others (a voluntary wait: OpenMP's waiters sleep after spinning a while) was not. Regions
// of one thread, shorter than min_wall, or run below the allowance (small work) teach
// nothing; a probe that teaches nothing is released so that a later pass probes again.
void governor_learn(GovernorState& st, const GovernorParams& p, int setting, int nt, bool probe,
                    double wall, const double* cpu, const unsigned char* preempted,
                    double now);

// ---------------------------------------------------------------------------------------
// The process-wide governor
// ---------------------------------------------------------------------------------------
// Whether passes adapt (default on); off: every pass uses min(setting, work cap) threads.
bool adaptive_threads();
void set_adaptive_threads(bool on);
// Forget what was learnt: the allowance becomes the setting (set_adaptive_threads(True)).
void governor_reset();
// The setting changed (set_num_threads): an allowance that the governor lowered because
// the machine is busy stays lowered (probes raise it again); one that was not follows the
// new setting. A forced test allowance (governor_force with hold) ends here.
void governor_setting_changed(int old_setting, int new_setting);
// A copy of the process-wide state (thread_policy()).
GovernorState governor_snapshot();
// Tests: set the allowance (clamped to [1, setting]), forget the history, and allow no
// probe for `probe_after` seconds; hold: passes use exactly min(allowance, work cap) and
// nothing is learnt until the next governor_reset().
void governor_force(int allowance, double probe_after, bool hold);
// Tests: every measured region's starving() says yes at its k-th call, whatever the
// clocks say, and the region teaches nothing (0: off).
void governor_force_bail(int k);
double monotonic_seconds();
// The calling thread's CPU time in seconds and its involuntary context switches so far.
double thread_cpu_seconds(long* preemptions = nullptr);

// Threads for a region that does not teach the governor (short loops, a pass that runs
// Python between its regions): min(setting, allowance, work_cap), never a probe.
int pass_threads(int work_cap);

// One pass's OpenMP region, constructed by the pass before it: threads() is the count to
// open it with; inside, every thread calls enter() first and leave() last; after the
// region the pass calls done(), which teaches the governor (a pass that throws first only
// releases its probe, in the destructor). A region of one thread measures nothing.
//
// Bail-out: a region whose threads step through layers together (a barrier per layer)
// waits at every barrier for a thread whose core is taken, a scheduler time slice each
// time. Its master asks starving() at each layer boundary; once the region has run
// bail_after seconds and a thread got less than bail_starved of that time, starving()
// says so (once), every thread leaves at the same layer (parallel.h's step_at), and the
// pass finishes the remaining layers on one thread. The evidence then teaches the
// governor as a starved region (done(true)).
class GovernedRegion {
 public:
  // work_cap: the most threads the pass's work can feed (parallel.h's work caps).
  explicit GovernedRegion(int work_cap);
  ~GovernedRegion();
  GovernedRegion(const GovernedRegion&) = delete;
  GovernedRegion& operator=(const GovernedRegion&) = delete;

  int threads() const { return nt_; }
  void enter();  // every thread of the region, first
  void leave();  // every thread of the region, last
  // The master (thread 0) only, where every thread has entered (after a barrier).
  bool starving();
  // The caller, after the region; bailed: the pass left the region at starving()'s word.
  void done(bool bailed = false);

 private:
  int nt_ = 1;
  int setting_ = 1;
  int team_ = 0;             // the threads OpenMP gave the region (recorded by thread 0)
  bool measure_ = false;     // adaptive and more than one thread: the region teaches
  bool probe_ = false;
  bool finished_ = false;
  bool starved_ = false;     // starving() said so; its evidence in bail_cpu_, bail_wall_
  double t0_ = 0.0;          // wall at thread 0's enter()
  double next_check_ = 0.0;  // starving(): no look at the clocks before this (monotonic s)
  int checks_ = 0;           // starving()'s calls
  bool forced_ = false;      // governor_force_bail made it say yes
  double bail_wall_ = 0.0;
  std::vector<double> cpu0_, cpu1_;  // per thread: CPU time at enter() and at leave()
  std::vector<long> ivcsw0_, ivcsw1_;  // and its involuntary context switches
  std::vector<double> bail_cpu_;     // per thread: CPU time used when starving() said so
  std::vector<clockid_t> clock_;     // per thread: its CPU clock,
  std::vector<char> has_clock_;      // when pthread_getcpuclockid gave one
};

}  // namespace gradchain
