// module.cpp — the only pybind11 file: exposes the core's chains as gradchain._core.
// Arrays arrive already validated by the Python layer (dtype, shape, contiguity,
// finiteness); the checks here only keep a direct caller of _core from crashing
// the process. The GIL is released around every compute call, and forward/backward
// can be interrupted with Ctrl-C (see InterruptScope).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "gradchain/blas.h"
#include "gradchain/cancel.h"
#include "gradchain/activation.h"
#include "gradchain/dispatch.h"
#include "gradchain/gated.h"
#include "gradchain/governor.h"
#include "gradchain/jacobian.h"
#include "gradchain/mlp.h"
#include "gradchain/norm.h"
#include "gradchain/report.h"
#include "gradchain/rnn.h"
#include "gradchain/per_example_rnn.h"

namespace py = pybind11;
using namespace gradchain;

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
void check_2d(const CArray<T>& a, const char* name, int64_t cols, int64_t rows = -1) {
  if (a.ndim() != 2 || a.shape(1) != cols || (rows >= 0 && a.shape(0) != rows))
    throw std::invalid_argument(std::string(name) + ": expected shape (" +
                                (rows >= 0 ? std::to_string(rows) : std::string("B")) + ", " +
                                std::to_string(cols) + "), got " + shape_str(a));
}

py::array_t<double> vec(const std::vector<double>& v) {
  py::array_t<double> a(py::ssize_t(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(double));
  return a;
}

// -1 (none) as None, else the index.
py::object index_or_none(int i) { return i < 0 ? py::object(py::none()) : py::int_(i); }

// The entries every report has.
template <class R>
void add_common(py::dict& d, const R& r) {
  d["global_norm"] = r.global_norm;
  d["first_nonfinite"] = index_or_none(r.first_nonfinite);
  d["forward_first_nonfinite"] = index_or_none(r.forward_first_nonfinite);
}

// A stage name, or None.
py::object stage_or_none(NonfiniteStage s) {
  return s == NonfiniteStage::None ? py::object(py::none()) : py::str(nonfinite_stage_name(s));
}

// The forensics entries every report has (empty arrays when not computed).
template <class R>
void add_forensics(py::dict& d, const R& r) {
  d["dead_unit_fractions"] = vec(r.dead);
  d["saturated_unit_fractions"] = vec(r.saturated);
  d["zero_grad_fractions"] = vec(r.zeros);
  d["subnormal_grad_fractions"] = vec(r.subnormals);
  d["mean_abs_activations"] = vec(r.mean_abs);
  d["forward_nonfinite_stage"] = stage_or_none(r.forward_stage);
  d["backward_nonfinite_stage"] = stage_or_none(r.backward_stage);
}

py::dict report_dict(const MlpReport& r, int64_t B) {
  py::dict d;
  d["weight_grad_norms"] = vec(r.weight);
  d["bias_grad_norms"] = vec(r.bias);
  d["norm_weight_grad_norms"] = vec(r.norm_weight);
  d["norm_bias_grad_norms"] = vec(r.norm_bias);
  d["activation_grad_norms"] = vec(r.activation);
  add_common(d, r);
  add_forensics(d, r);
  if (!r.example_layer.empty()) {  // (L+1, B)
    const py::ssize_t rows = py::ssize_t(r.example_layer.size()) / py::ssize_t(B);
    py::array_t<double> a({rows, py::ssize_t(B)});
    std::memcpy(a.mutable_data(), r.example_layer.data(), r.example_layer.size() * sizeof(double));
    d["example_layer_shares"] = a;
  } else {
    d["example_layer_shares"] = py::none();
  }
  return d;
}

// A 1-D NumPy view of `n` elements of core memory, kept alive by `owner`.
template <class T>
py::array_t<T> view(T* ptr, int64_t n, py::handle owner) {
  return py::array_t<T>({py::ssize_t(n)}, {py::ssize_t(sizeof(T))}, ptr, owner);
}

// ---------------------------------------------------------------------------------------
// Ctrl-C during a compute call. Python's own SIGINT handler only records the signal; the
// interpreter acts on it once the call returns (seconds later for a big pass). For a call
// from the main thread while SIGINT has Python's default handler (KeyboardInterrupt), a C
// handler goes in front of Python's for the call's duration: it sets the core's cancel flag
// (gradchain/cancel.h), then calls Python's handler, so the signal is recorded as usual. The
// pass stops at its next layer / timestep / GEMM-block boundary and throws Cancelled; back
// with the GIL, PyErr_CheckSignals() runs the Python handler, which raises
// KeyboardInterrupt. Only the main thread installs (Python runs signal handlers there
// only), so the depth count of nested calls (a custom activation calling another model)
// needs no lock. Calls from other threads, or with a handler of the user's own, run to
// their end as before; the user's handler then runs when the call returns.
std::atomic<bool> g_sigint{false};   // the cancel flag of the main thread's calls
struct sigaction g_prev_sigint;      // what on_sigint chains to (Python's handler)
int g_sigint_depth = 0;              // main-thread calls in progress with on_sigint installed
unsigned long g_main_thread = 0;     // PyThread_get_thread_ident() of the main thread

void on_sigint(int sig, siginfo_t* info, void* ctx) {
  g_sigint.store(true, std::memory_order_relaxed);
  const struct sigaction& p = g_prev_sigint;
  if (p.sa_flags & SA_SIGINFO)
    p.sa_sigaction(sig, info, ctx);
  else if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN)
    p.sa_handler(sig);
}

bool on_sigint_installed() {
  struct sigaction cur;
  return sigaction(SIGINT, nullptr, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
         cur.sa_sigaction == on_sigint;
}

// The child of a fork: its only thread is the forking one, now Python's main thread, and
// none of the parent's calls is in progress in it.
void sigint_after_fork_child() {
  g_main_thread = PyThread_get_thread_ident();
  if (g_sigint_depth > 0 && on_sigint_installed()) sigaction(SIGINT, &g_prev_sigint, nullptr);
  g_sigint_depth = 0;
  g_sigint.store(false);
}

bool python_default_sigint() {
  // _signal's own getsignal (signal.getsignal wraps it in enums: ten times slower)
  static py::handle getsignal =
      py::object(py::module_::import("_signal").attr("getsignal")).release();
  static py::handle dflt =
      py::object(py::module_::import("_signal").attr("default_int_handler")).release();
  return getsignal(py::int_(SIGINT)).is(dflt);
}

// Around one compute call; constructed and destroyed with the GIL held.
class InterruptScope {
 public:
  InterruptScope() {
    if (PyThread_get_thread_ident() != g_main_thread || !python_default_sigint()) return;
    if (g_sigint_depth == 0) {
      struct sigaction cur;
      if (sigaction(SIGINT, nullptr, &cur) != 0) return;
      if (!(cur.sa_flags & SA_SIGINFO) && (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN))
        return;  // not Python's handler at the C level: leave it alone
      g_prev_sigint = cur;
      g_sigint.store(false);
      struct sigaction ours = cur;
      ours.sa_sigaction = on_sigint;
      ours.sa_flags = cur.sa_flags | SA_SIGINFO;
      if (sigaction(SIGINT, &ours, nullptr) != 0) return;
    }
    ++g_sigint_depth;
    active_ = true;
    // a Ctrl-C that came just before the handler went in: raise now, before any work
    if (PyErr_CheckSignals() != 0) {
      leave();  // (no destructor after a throwing constructor)
      throw py::error_already_set();
    }
  }
  ~InterruptScope() { leave(); }
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

  const std::atomic<bool>* flag() const { return active_ ? &g_sigint : nullptr; }

  // After the core threw Cancelled (GIL held): the Python handler's exception.
  [[noreturn]] static void raise() {
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    PyErr_SetNone(PyExc_KeyboardInterrupt);  // the signal was taken elsewhere: still raise
    throw py::error_already_set();
  }

 private:
  void leave() {
    if (!active_) return;
    active_ = false;
    if (--g_sigint_depth > 0) return;
    if (on_sigint_installed()) sigaction(SIGINT, &g_prev_sigint, nullptr);  // else: replaced
  }

  bool active_ = false;
};

// Chains whose forward/backward is running on this thread. A custom activation's callback
// runs on that thread in the middle of the pass, with the chain's mutex held: a call back
// into the same chain would wait for ever on it, so it is refused at once.
thread_local std::vector<const void*> t_running;

void check_not_running(const void* chain, const char* what) {
  if (std::find(t_running.begin(), t_running.end(), chain) != t_running.end())
    throw std::runtime_error(std::string(what) +
                             ": a pass of this model is running on this thread (a call from "
                             "its own custom activation); call it after the pass returns");
}

// Passes of fewer multiply-adds finish within milliseconds (the interpreter then raises
// KeyboardInterrupt itself): they skip the handler's few microseconds of set-up.
constexpr double kInterruptibleWork = double(1 << 24);

// Runs f() (the core's pass on `chain`, about `work` multiply-adds) with the GIL released,
// interruptible by Ctrl-C.
template <class F>
auto run_pass(const void* chain, const char* what, double work, F&& f) {
  check_not_running(chain, what);
  t_running.push_back(chain);
  struct Pop {
    ~Pop() { t_running.pop_back(); }
  } pop;
  if (work < kInterruptibleWork) {
    py::gil_scoped_release nogil;
    return f();
  }
  InterruptScope irq;
  try {
    py::gil_scoped_release nogil;
    CancelScope cancel(irq.flag());
    return f();
  } catch (const Cancelled&) {
    InterruptScope::raise();
  }
}

// A custom activation's callback: fn(x: ndarray (rows, cols)) -> (f, df), validated by the
// Python layer's wrapper; called with the GIL released (it takes it) and outside OpenMP regions.
template <class T>
CustomActFn<T> custom_activation(py::function fn) {
  return [fn](const T* x, T* f, T* d, int64_t rows, int64_t cols) {
    py::gil_scoped_acquire gil;
    CArray<T> xa({py::ssize_t(rows), py::ssize_t(cols)});
    std::memcpy(xa.mutable_data(), x, size_t(rows * cols) * sizeof(T));
    py::tuple res = fn(xa);
    if (res.size() != 2) throw std::invalid_argument("custom activation must return (f, df)");
    auto fa = res[0].cast<CArray<T>>();
    auto da = res[1].cast<CArray<T>>();
    check_2d<T>(fa, "custom activation f(x)", cols, rows);
    check_2d<T>(da, "custom activation df(x)", cols, rows);
    std::memcpy(f, fa.data(), size_t(rows * cols) * sizeof(T));
    std::memcpy(d, da.data(), size_t(rows * cols) * sizeof(T));
  };
}

// What every chain class exposes the same way: named views of its flat buffers and
// the clipping functions over its gradient spans (under the chain's lock).
template <class C, class T>
void bind_shared(py::class_<C>& cls) {
  cls.def("invalidate", &C::invalidate)
      .def("set_custom_activation",
           [](C& c, py::function fn) { c.set_custom_activation(custom_activation<T>(fn)); })
      .def("tensors",
           [](const C& c) {
             py::list out;
             for (auto& t : c.tensors())
               out.append(py::make_tuple(t.name, t.offset, py::tuple(py::cast(t.shape)), t.kind));
             return out;
           })
      .def("param_array", [](py::object self) {
        C& c = self.cast<C&>();
        return view<T>(c.params(), c.num_params(), self);
      })
      .def("grad_array", [](py::object self) {
        C& c = self.cast<C&>();
        return view<T>(c.grads(), c.num_params(), self);
      })
      .def("clip_grad_norm",
           [](C& c, double max_norm, bool error_if_nonfinite) {
             check_not_running(&c, "clip_grad_norm");
             py::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lock(c.mutex());
             return clip_grad_norm<T>(c.grad_spans(), max_norm, error_if_nonfinite);
           })
      .def("clip_grad_value",
           [](C& c, double v) {
             check_not_running(&c, "clip_grad_value");
             py::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lock(c.mutex());
             clip_grad_value<T>(c.grad_spans(), v);
           })
      .def("clip_grad_norm_per_tensor",
           [](C& c, double max_norm) {
             check_not_running(&c, "clip_grad_norm_per_tensor");
             std::vector<double> norms;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lock(c.mutex());
               norms = clip_grad_norm_per_tensor<T>(c.grad_spans(), max_norm);
             }
             return vec(norms);
           })
      .def("grad_norms", [](C& c) {
        check_not_running(&c, "grad_norms");
        std::vector<double> norms;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(c.mutex());
          for (auto& s : c.grad_spans()) norms.push_back(tensor_norm<T>(s.first, s.second));
        }
        return vec(norms);
      });
}

// An MLP linearised at given inputs (jacobian.h), with the chain it reads kept alive.
template <class T>
struct LinearHandle {
  py::object chain;  // the MlpChain<T>: its parameters are read by every product
  const void* chain_ptr = nullptr;
  std::vector<int64_t> sizes;
  double num_params = 0.0;
  std::unique_ptr<MlpLinearization<T>> lin;
};

template <class T>
void bind_linear(py::module_& m, const char* name) {
  using H = LinearHandle<T>;
  py::class_<H>(m, name, "An MLP linearised at given inputs (use gradchain.MLP.linearize).")
      .def_property_readonly("batch", [](const H& h) { return h.lin->batch(); })
      .def_property_readonly("forward_only", [](const H& h) { return h.lin->forward_only(); })
      .def(
          "jvp",
          [](H& h, const CArray<T>& V, std::vector<int64_t> record) {
            check_2d<T>(V, "tangents", h.sizes.front());
            const int64_t R = V.shape(0), L = int64_t(h.sizes.size()) - 2;
            CArray<T> out({py::ssize_t(R), py::ssize_t(h.sizes.back())});
            py::dict recd;
            std::vector<std::pair<int64_t, T*>> rec;
            for (int64_t l : record) {
              if (l < 0 || l > L)
                throw std::invalid_argument("record: layer " + std::to_string(l) +
                                            " is not in 0.." + std::to_string(L));
              CArray<T> a({py::ssize_t(R), py::ssize_t(h.sizes[size_t(l)])});
              rec.emplace_back(l, a.mutable_data());
              recd[py::int_(l)] = a;
            }
            const T* vp = V.data();
            T* op = out.mutable_data();
            run_pass(h.chain_ptr, "jvp", double(R) * h.num_params,
                     [&] { h.lin->jvp(vp, R, op, rec); });
            return py::make_tuple(out, recd);
          },
          py::arg("tangents").noconvert(), py::arg("record") = std::vector<int64_t>{},
          "Forward mode: tangents (R, in) -> (their tangents of y (R, out), {l: of a_l}).")
      .def(
          "vjp",
          [](H& h, const CArray<T>& U, bool want_dx) {
            check_2d<T>(U, "cotangents", h.sizes.back());
            const int64_t R = U.shape(0), L = int64_t(h.sizes.size()) - 2;
            CArray<double> ss({py::ssize_t(L + 1), py::ssize_t(R)});
            py::object dxo = py::none();
            T* dxp = nullptr;
            if (want_dx) {
              CArray<T> dx({py::ssize_t(R), py::ssize_t(h.sizes.front())});
              dxp = dx.mutable_data();
              dxo = dx;
            }
            const T* up = U.data();
            double* sp = ss.mutable_data();
            run_pass(h.chain_ptr, "vjp", 2.0 * double(R) * h.num_params,
                     [&] { h.lin->vjp(up, R, dxp, sp); });
            return py::make_tuple(ss, dxo);
          },
          py::arg("cotangents").noconvert(), py::arg("want_dx") = true,
          "Reverse mode: cotangents (R, out) -> (row sums of squares (L+1, R) at a_0..a_L, "
          "the cotangents of x (R, in) or None).");
}

template <class T>
void bind_mlp(py::module_& m, const char* name) {
  using C = MlpChain<T>;
  py::class_<C> cls(m, name, "The C++ MLP chain (use gradchain.MLP).");
  cls
      .def(py::init([](std::vector<int64_t> sizes, int act, double p0, double p1, int norm,
                       bool bias, std::vector<bool> residual, double residual_scale, double eps,
                       double momentum) {
             if (act < 0 || act > int(Act::Custom)) throw std::invalid_argument("bad activation id");
             if (norm < 0 || norm >= int(kNumNorms)) throw std::invalid_argument("bad norm id");
             MlpConfig cfg;
             cfg.sizes = std::move(sizes);
             cfg.act = ActParams{Act(act), p0, p1};
             cfg.norm = NormKind(norm);
             cfg.bias = bias;
             for (bool r : residual) cfg.residual.push_back(r ? 1 : 0);
             cfg.residual_scale = residual_scale;
             cfg.eps = eps;
             cfg.momentum = momentum;
             return new C(std::move(cfg));
           }),
           py::arg("sizes"), py::arg("act"), py::arg("p0"), py::arg("p1"), py::arg("norm"),
           py::arg("bias"), py::arg("residual"), py::arg("residual_scale"), py::arg("eps"),
           py::arg("momentum"))
      .def_property_readonly("num_hidden", &C::num_hidden)
      .def_readwrite("training", &C::training)
      .def_readwrite("health_threshold", &C::health_threshold)
      .def_readwrite("forensics", &C::forensics)
      .def_property_readonly("has_forward", &C::has_forward)
      .def_property_readonly("forward_batch", &C::forward_batch)
      .def("pass_bytes", &C::pass_bytes, py::arg("batch"),
           "Bytes a pass over `batch` rows would allocate now (workspace, packing scratch).")
      .def_property_readonly("forward_count", &C::forward_count)
      .def("buffer_array", [](py::object self) {
        C& c = self.cast<C&>();
        return view<T>(c.buffers(), c.num_buffers(), self);
      })
      .def(
          "forward",
          [](C& c, const CArray<T>& x) {
            check_2d<T>(x, "x", c.config().sizes.front());
            const int64_t B = x.shape(0);
            CArray<T> y({py::ssize_t(B), py::ssize_t(c.config().sizes.back())});
            const T* xp = x.data();
            T* yp = y.mutable_data();
            run_pass(&c, "forward", double(B) * double(c.num_params()),
                     [&] { c.forward(xp, B, yp); });
            return y;
          },
          py::arg("x").noconvert())
      .def(
          "backward",
          [](C& c, const CArray<T>& gy, bool accumulate, bool report, bool per_example) {
            if (!c.has_forward()) throw std::logic_error("backward() called before forward()");
            check_2d<T>(gy, "grad_output", c.config().sizes.back(), c.forward_batch());
            CArray<T> dx({py::ssize_t(c.forward_batch()), py::ssize_t(c.config().sizes.front())});
            const T* gp = gy.data();
            T* dp = dx.mutable_data();
            const double work = 2.0 * double(c.forward_batch()) * double(c.num_params());
            MlpReport rep = run_pass(&c, "backward", work, [&] {
              return c.backward(gp, dp, accumulate, report, per_example);
            });
            return py::make_tuple(report_dict(rep, c.forward_batch()), dx);
          },
          py::arg("grad_output").noconvert(), py::arg("accumulate") = false,
          py::arg("report") = true, py::arg("per_example") = false)
      .def(
          "linearize",
          [](py::object self, const CArray<T>& x, bool forward_only, bool keep_pre,
             bool keep_y) {
            C& c = self.cast<C&>();
            const auto& sizes = c.config().sizes;
            check_2d<T>(x, "x", sizes.front());
            const int64_t B = x.shape(0);
            int64_t hidden = 0;
            for (size_t i = 1; i + 1 < sizes.size(); ++i) hidden += sizes[i];
            auto h = std::make_unique<LinearHandle<T>>();
            h->chain = self;
            h->chain_ptr = &c;
            h->sizes = sizes;
            h->num_params = double(c.num_params());
            py::object pre = py::none(), y = py::none();
            T* prep = nullptr;
            T* yp = nullptr;
            if (keep_pre) {
              CArray<T> a({py::ssize_t(B * hidden)});
              prep = a.mutable_data();
              pre = a;
            }
            if (keep_y) {
              CArray<T> a({py::ssize_t(B), py::ssize_t(sizes.back())});
              yp = a.mutable_data();
              y = a;
            }
            const T* xp = x.data();
            LinearHandle<T>* hp = h.get();
            run_pass(&c, "linearize", double(B) * double(c.num_params()), [&] {
              hp->lin = std::make_unique<MlpLinearization<T>>(c, xp, B, forward_only, prep, yp);
            });
            return py::make_tuple(py::cast(std::move(h)), pre, y);
          },
          py::arg("x").noconvert(), py::arg("forward_only") = false, py::arg("keep_pre") = false,
          py::arg("keep_y") = false,
          "The chain linearised at x (B, in): (handle, pre-activations (B * sum h_l,) or None, "
          "y (B, out) or None). The saved forward pass and the gradients are left alone.");
  bind_shared<C, T>(cls);
}

py::array_t<double> mat(const std::vector<double>& v, int64_t rows, int64_t cols);

// The entries every recurrent report has (RecurrentReport); ||dL/dh_t|| as zeros when the
// report was not computed.
void add_recurrent(py::dict& d, const RecurrentReport& r, int64_t steps) {
  d["timestep_grad_norms"] = vec(r.timestep.empty() ? std::vector<double>(size_t(steps), 0.0)
                                                    : r.timestep);
  d["weight_ih_grad_norm"] = r.weight_ih;
  d["weight_hh_grad_norm"] = r.weight_hh;
  d["bias_ih_grad_norm"] = r.bias_ih;
  d["bias_hh_grad_norm"] = r.bias_hh;
  d["readout_weight_grad_norm"] = r.readout_weight;
  d["readout_bias_grad_norm"] = r.readout_bias;
  d["h0_grad_norm"] = r.h0;
  add_common(d, r);
  if (!r.example_tensor.empty()) {  // per_example: (kExTensors, B) and (T, B) squared shares
    const int64_t B = int64_t(r.example_tensor.size()) / kExTensors;
    d["example_tensor_sumsq"] = mat(r.example_tensor, kExTensors, B);
    d["example_step_sumsq"] = mat(r.example_step, int64_t(r.example_step.size()) / B, B);
  } else {
    d["example_tensor_sumsq"] = py::none();
    d["example_step_sumsq"] = py::none();
  }
}

py::dict rnn_report_dict(const RnnReport& r, int64_t steps) {
  py::dict d;
  add_recurrent(d, r, steps);
  add_forensics(d, r);
  return d;
}

template <class T>
void check_3d(const CArray<T>& a, const char* name, int64_t steps, int64_t B, int64_t F) {
  if (a.ndim() != 3 || a.shape(0) != steps || a.shape(1) != B || a.shape(2) != F)
    throw std::invalid_argument(std::string(name) + ": expected shape (" + std::to_string(steps) +
                                ", " + std::to_string(B) + ", " + std::to_string(F) + "), got " +
                                shape_str(a));
}

// What the recurrent chains' forward and backward bindings share.
template <class T>
struct SeqArgs {
  // x (T, B, I): its (T, B) (a bad shape throws)
  template <class Cfg>
  static std::pair<int64_t, int64_t> check_x(const CArray<T>& x, const Cfg& cfg) {
    if (x.ndim() != 3 || x.shape(2) != cfg.input_size)
      throw std::invalid_argument("x: expected shape (T, B, " + std::to_string(cfg.input_size) +
                                  "), got " + shape_str(x));
    return {x.shape(0), x.shape(1)};
  }
  // An optional state (B, H) (h0, c0): its data or null; `keep` holds the array.
  static const T* state(py::object s, const char* name, int64_t H, int64_t B, CArray<T>& keep) {
    if (s.is_none()) return nullptr;
    keep = s.cast<CArray<T>>();
    check_2d<T>(keep, name, H, B);
    return keep.data();
  }
  // A new (d0, d1, d2) array and its data, or (None, null) when `make` is false.
  static std::pair<py::object, T*> out(bool make, int64_t d0, int64_t d1, int64_t d2 = -1) {
    if (!make) return {py::none(), nullptr};
    std::vector<py::ssize_t> shp{py::ssize_t(d0), py::ssize_t(d1)};
    if (d2 >= 0) shp.push_back(py::ssize_t(d2));
    CArray<T> a(shp);
    T* p = a.mutable_data();
    return {py::object(std::move(a)), p};
  }
  // grad_hs (T, B, H) and grad_ys (T, B, K) of a backward call, checked against the saved
  // pass's (T, B): None gives null.
  CArray<T> gh, gy;
  const T* ghp = nullptr;
  const T* gyp = nullptr;
  template <class Cfg>
  SeqArgs(py::object grad_hs, py::object grad_ys, const Cfg& cfg, int64_t steps, int64_t B) {
    if (!grad_hs.is_none()) {
      gh = grad_hs.cast<CArray<T>>();
      check_3d<T>(gh, "grad_hs", steps, B, cfg.hidden_size);
      ghp = gh.data();
    }
    if (!grad_ys.is_none()) {
      if (cfg.output_size == 0) throw std::invalid_argument("grad_ys: the model has no readout");
      gy = grad_ys.cast<CArray<T>>();
      check_3d<T>(gy, "grad_ys", steps, B, cfg.output_size);
      gyp = gy.data();
    }
  }
};

// The recurrent chains' shared members: has_forward, the saved pass's shape, pass_bytes,
// then bind_shared's tensors, views and clipping.
template <class C, class T>
void bind_recurrent(py::class_<C>& cls) {
  cls.def_property_readonly("has_forward", &C::has_forward)
      .def_property_readonly("forward_steps", &C::forward_steps)
      .def_property_readonly("forward_batch", &C::forward_batch)
      .def("pass_bytes", &C::pass_bytes, py::arg("steps"), py::arg("batch"),
           "Bytes a pass over (steps, batch) would allocate now (workspace, packing scratch).");
  cls.def_property(
          "example_path", [](const C& c) { return c.example_path; },
          [](C& c, int p) {
            if (p < 0 || p > 3) throw std::invalid_argument("example_path: 0, 1, 2 or 3");
            c.example_path = p;
          },
          "dW's and per_example's path: 0 by the shape (dW as the sum of the examples' own "
          "gradients on long sequences, else merged GEMMs and the norms by the flop count), 1 "
          "Gram matrices, 2 per-example gradients (both: merged dW), 3 always dW as the "
          "examples' sum. Applies with per_example=False too: dW never depends on it.");
  bind_shared<C, T>(cls);
}

template <class T>
void bind_rnn(py::module_& m, const char* name) {
  using C = RnnChain<T>;
  py::class_<C> cls(m, name, "The C++ RNN chain (use gradchain.RNN).");
  cls
      .def(py::init([](int64_t I, int64_t H, int64_t K, int act, double p0, double p1, bool bias) {
             if (act < 0 || act > int(Act::Custom)) throw std::invalid_argument("bad activation id");
             RnnConfig cfg;
             cfg.input_size = I;
             cfg.hidden_size = H;
             cfg.output_size = K;
             cfg.act = ActParams{Act(act), p0, p1};
             cfg.bias = bias;
             return new C(cfg);
           }),
           py::arg("input_size"), py::arg("hidden_size"), py::arg("output_size"), py::arg("act"),
           py::arg("p0"), py::arg("p1"), py::arg("bias"))
      .def_readwrite("health_threshold", &C::health_threshold)
      .def_readwrite("forensics", &C::forensics)
      .def(
          "forward",
          [](C& c, const CArray<T>& x, py::object h0) {
            using S = SeqArgs<T>;
            const auto& cfg = c.config();
            const auto tb = S::check_x(x, cfg);
            const int64_t steps = tb.first, B = tb.second;
            CArray<T> h0a;
            const T* h0p = S::state(h0, "h0", cfg.hidden_size, B, h0a);
            auto [hs, hp] = S::out(true, steps, B, cfg.hidden_size);
            auto [ys, yp] = S::out(cfg.output_size > 0, steps, B, cfg.output_size);
            const T* xp = x.data();
            run_pass(&c, "forward", double(steps) * double(B) * double(c.num_params()),
                     [&, hp = hp, yp = yp] { c.forward(xp, h0p, steps, B, hp, yp); });
            return py::make_tuple(hs, ys);
          },
          py::arg("x").noconvert(), py::arg("h0") = py::none())
      .def(
          "backward",
          [](C& c, py::object grad_hs, py::object grad_ys, bool accumulate, bool report,
             bool per_example) {
            if (!c.has_forward()) throw std::logic_error("backward() called before forward()");
            if (per_example && !report)
              throw std::invalid_argument("per_example: the per-example norms need report=True");
            using S = SeqArgs<T>;
            const auto& cfg = c.config();
            const int64_t steps = c.forward_steps(), B = c.forward_batch();
            const S g(grad_hs, grad_ys, cfg, steps, B);
            auto [dx, dxp] = S::out(true, steps, B, cfg.input_size);
            auto [dh0, dhp] = S::out(true, B, cfg.hidden_size);
            RnnReport rep = run_pass(
                &c, "backward", 2.0 * double(steps) * double(B) * double(c.num_params()),
                [&, dxp = dxp, dhp = dhp] {
                  return c.backward(g.ghp, g.gyp, dxp, dhp, accumulate, report, per_example);
                });
            return py::make_tuple(rnn_report_dict(rep, steps), dx, dh0);
          },
          py::arg("grad_hs") = py::none(), py::arg("grad_ys") = py::none(),
          py::arg("accumulate") = false, py::arg("report") = true,
          py::arg("per_example") = false)
      .def(
          "replicate_batch",
          [](C& c, int64_t n) {
            py::gil_scoped_release release;
            c.replicate_batch(n);
          },
          py::arg("n"),
          "The saved forward over (T, B) becomes that of (T, n*B), the batch repeated n "
          "times (the batched probe's n backward passes in one).")
      .def_readwrite("example_tensors", &C::example_tensors,
                     "per_example's tensor norms (False: the steps' only, the batched probe).");
  bind_recurrent<C, T>(cls);
}

// A (rows, cols) float64 array of a row-major vector.
py::array_t<double> mat(const std::vector<double>& v, int64_t rows, int64_t cols) {
  py::array_t<double> a({py::ssize_t(rows), py::ssize_t(cols)});
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(double));
  return a;
}

py::dict gated_report_dict(const GatedReport& r, int gates, int64_t steps) {
  py::dict d;
  add_recurrent(d, r, steps);
  d["cell_grad_norms"] = vec(r.cell);
  d["gate_means"] = mat(r.gate_mean, gates, steps);
  d["gate_saturation"] = mat(r.gate_sat, gates, steps);
  auto blocks = [gates](const std::vector<double>& v) {
    return vec(v.empty() ? std::vector<double>(size_t(gates), 0.0) : v);
  };
  d["weight_ih_gate_grad_norms"] = blocks(r.w_ih_gate);
  d["weight_hh_gate_grad_norms"] = blocks(r.w_hh_gate);
  d["bias_ih_gate_grad_norms"] = blocks(r.b_ih_gate);
  d["bias_hh_gate_grad_norms"] = blocks(r.b_hh_gate);
  d["c0_grad_norm"] = r.c0;
  add_forensics(d, r);
  d["cell_zero_grad_fractions"] = vec(r.c_zeros);
  d["cell_subnormal_grad_fractions"] = vec(r.c_subnormals);
  d["mean_abs_cell_states"] = vec(r.mean_abs_c);
  return d;
}

template <class T>
void bind_gated(py::module_& m, const char* name) {
  using C = GatedChain<T>;
  py::class_<C> cls(m, name, "The C++ LSTM / GRU chain (use gradchain.LSTM, gradchain.GRU).");
  cls
      .def(py::init([](int cell, int64_t I, int64_t H, int64_t K, bool bias) {
             if (cell != int(Cell::Lstm) && cell != int(Cell::Gru))
               throw std::invalid_argument("cell: expected 0 (LSTM) or 1 (GRU)");
             GatedConfig cfg;
             cfg.cell = Cell(cell);
             cfg.input_size = I;
             cfg.hidden_size = H;
             cfg.output_size = K;
             cfg.bias = bias;
             return new C(cfg);
           }),
           py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("output_size"), py::arg("bias"))
      .def_property_readonly("gates", &C::gates)
      .def_readwrite("forensics", &C::forensics)
      .def(
          "forward",
          [](C& c, const CArray<T>& x, py::object h0, py::object c0) {
            using S = SeqArgs<T>;
            const auto& cfg = c.config();
            const bool lstm = cfg.cell == Cell::Lstm;
            const auto tb = S::check_x(x, cfg);
            const int64_t steps = tb.first, B = tb.second;
            CArray<T> h0a, c0a;
            const T* h0p = S::state(h0, "h0", cfg.hidden_size, B, h0a);
            if (!c0.is_none() && !lstm) throw std::invalid_argument("c0: a GRU has no cell state");
            const T* c0p = S::state(c0, "c0", cfg.hidden_size, B, c0a);
            auto [hs, hp] = S::out(true, steps, B, cfg.hidden_size);
            auto [cs, cp] = S::out(lstm, steps, B, cfg.hidden_size);
            auto [ys, yp] = S::out(cfg.output_size > 0, steps, B, cfg.output_size);
            const T* xp = x.data();
            run_pass(&c, "forward", double(steps) * double(B) * double(c.num_params()),
                     [&, hp = hp, cp = cp, yp = yp] {
                       c.forward(xp, h0p, c0p, steps, B, hp, cp, yp);
                     });
            return py::make_tuple(hs, cs, ys);
          },
          py::arg("x").noconvert(), py::arg("h0") = py::none(), py::arg("c0") = py::none())
      .def(
          "backward",
          [](C& c, py::object grad_hs, py::object grad_ys, bool accumulate, bool report,
             bool per_example) {
            if (!c.has_forward()) throw std::logic_error("backward() called before forward()");
            if (per_example && !report)
              throw std::invalid_argument("per_example: the per-example norms need report=True");
            using S = SeqArgs<T>;
            const auto& cfg = c.config();
            const int64_t steps = c.forward_steps(), B = c.forward_batch();
            const S g(grad_hs, grad_ys, cfg, steps, B);
            auto [dx, dxp] = S::out(true, steps, B, cfg.input_size);
            auto [dh0, dhp] = S::out(true, B, cfg.hidden_size);
            auto [dc0, dcp] = S::out(cfg.cell == Cell::Lstm, B, cfg.hidden_size);
            GatedReport rep = run_pass(
                &c, "backward", 2.0 * double(steps) * double(B) * double(c.num_params()),
                [&, dxp = dxp, dhp = dhp, dcp = dcp] {
                  return c.backward(g.ghp, g.gyp, dxp, dhp, dcp, accumulate, report,
                                    per_example);
                });
            return py::make_tuple(gated_report_dict(rep, c.gates(), steps), dx, dh0, dc0);
          },
          py::arg("grad_hs") = py::none(), py::arg("grad_ys") = py::none(),
          py::arg("accumulate") = false, py::arg("report") = true,
          py::arg("per_example") = false);
  bind_recurrent<C, T>(cls);
}

// f, d = act(x), act'(x) through the active kernel table (tests measure accuracy per ISA).
template <class T>
py::tuple act_eval(int act, double p0, double p1, const CArray<T>& x) {
  if (act < 0 || act >= int(Act::Custom)) throw std::invalid_argument("bad activation id");
  CArray<T> f(x.size()), d(x.size());
  const T* xp = x.data();
  T* fp = f.mutable_data();
  T* dp = d.mutable_data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    kernels<T>().act_apply(ActParams{Act(act), p0, p1}, xp, fp, dp, n);
  }
  return py::make_tuple(f, d);
}

py::dict governor_dict(const GovernorState& st) {
  py::dict d;
  d["allowance"] = st.allowance;
  d["history"] = st.history;
  d["history_len"] = st.history_len;
  d["probe_interval"] = st.probe_interval;
  d["next_probe"] = st.next_probe;
  d["probing"] = st.probing;
  d["regions"] = st.regions;
  d["starved_regions"] = st.starved_regions;
  d["drops"] = st.drops;
  d["probes"] = st.probes;
  d["probe_successes"] = st.probe_successes;
  d["last_threads"] = st.last_threads;
  d["last_wall"] = st.last_wall;
  d["last_effective"] = st.last_effective;
  d["last_starved"] = st.last_starved;
  return d;
}

// The governor's policy on its own (tests): a state, the default parameters and a clock
// the caller gives.
struct GovernorSim {
  GovernorParams params;
  GovernorState st;
  int setting;
  explicit GovernorSim(int n) : st(governor_initial(n, params)), setting(n) {}
};

void bind_governor(py::module_& m) {
  m.def("get_adaptive_threads", &adaptive_threads);
  m.def("set_adaptive_threads", &set_adaptive_threads, py::arg("on"));
  m.def("_governor_state", [] { return governor_dict(governor_snapshot()); },
        "A copy of the process-wide governor's state.");
  m.def("_monotonic", &monotonic_seconds, "The governor's clock (monotonic seconds).");
  m.def("_governor_reset", &governor_reset);
  m.def(
      "_governor_params",
      [] {
        const GovernorParams p;
        py::dict d;
        d["min_wall"] = p.min_wall;
        d["starved"] = p.starved;
        d["window"] = p.window;
        d["confirm"] = p.confirm;
        d["probe_first"] = p.probe_first;
        d["probe_max"] = p.probe_max;
        d["probe_cost_factor"] = p.probe_cost_factor;
        return d;
      },
      "The governor's parameters (governor.h).");
  m.def("_governor_force", &governor_force, py::arg("allowance"), py::arg("probe_after"),
        py::arg("hold") = false,
        "Set the process-wide allowance (clamped to [1, setting]) and forget the history; "
        "no probe for probe_after seconds; hold: keep it, learning nothing, until the next "
        "reset (tests).");
  m.def("_governor_force_bail", &governor_force_bail, py::arg("k"),
        "Every measured region bails out at its k-th layer boundary and teaches nothing "
        "(0: off; tests).");
  py::class_<GovernorSim>(m, "_GovernorSim",
                          "The governor's policy alone, on the caller's clock (tests).")
      .def(py::init<int>(), py::arg("setting"))
      .def(
          "threads",
          [](GovernorSim& g, int work_cap, double now) {
            bool probe = false;
            const int nt = governor_threads(g.st, g.params, g.setting, work_cap, now, &probe);
            return py::make_tuple(nt, probe);
          },
          py::arg("work_cap"), py::arg("now"))
      .def(
          "learn",
          [](GovernorSim& g, int nt, bool probe, double wall, std::vector<double> cpu,
             double now, std::optional<std::vector<bool>> preempted) {
            if (int(cpu.size()) != nt) throw std::invalid_argument("cpu: expected nt values");
            std::vector<unsigned char> pre;
            if (preempted) {
              if (int(preempted->size()) != nt)
                throw std::invalid_argument("preempted: expected nt values");
              for (bool b : *preempted) pre.push_back(b ? 1 : 0);
            }
            governor_learn(g.st, g.params, g.setting, nt, probe, wall, cpu.data(),
                           preempted ? pre.data() : nullptr, now);
          },
          py::arg("nt"), py::arg("probe"), py::arg("wall"), py::arg("cpu"), py::arg("now"),
          py::arg("preempted") = py::none())
      .def("state", [](const GovernorSim& g) { return governor_dict(g.st); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "gradchain's compiled core (internal; use the gradchain package).";
  blas_init();
  g_main_thread =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  pthread_atfork(nullptr, nullptr, sigint_after_fork_child);
  py::register_exception<NonFiniteError>(m, "NonFiniteError", PyExc_RuntimeError);

  bind_linear<float>(m, "MlpLinearF32");
  bind_linear<double>(m, "MlpLinearF64");
  bind_mlp<float>(m, "MlpChainF32");
  bind_mlp<double>(m, "MlpChainF64");
  bind_rnn<float>(m, "RnnChainF32");
  bind_rnn<double>(m, "RnnChainF64");
  bind_gated<float>(m, "GatedChainF32");
  bind_gated<double>(m, "GatedChainF64");

  m.def("act_eval", &act_eval<float>, py::arg("act"), py::arg("p0"), py::arg("p1"),
        py::arg("x").noconvert());
  m.def("act_eval", &act_eval<double>, py::arg("act"), py::arg("p0"), py::arg("p1"),
        py::arg("x").noconvert());
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("max_num_threads", &max_threads, "The largest thread setting (set_num_threads).");
  bind_governor(m);
  m.def("forked_single_threaded", &forked_single_threaded,
        "Whether this process was forked after the core had started threads (then every "
        "region runs on one thread).");
  m.def("_panel_gemm", &panel_gemm, "Whether layer products may use the panel GEMM (benchmarks).");
  m.def("_set_panel_gemm", &set_panel_gemm, py::arg("on"),
        "Allow (True, the default) or forbid layer products on the panel GEMM (benchmarks).");
  m.def("get_isa", &current_isa);
  m.def("set_isa", &set_isa, py::arg("name"));
  m.def("available_isas", &available_isas);
  m.def("blas_corename", [] { return std::string(blas_corename()); });
  m.def("combine_norms", &combine_norms, py::arg("norms"));
  // The tables of gradchain/activation_list.h and gradchain/norm_list.h, by name.
  py::dict act_ids, act_selects, act_params;
  for (const ActivationRow& r : kActivations) {
    act_ids[r.name] = int(r.id);
    act_selects[r.name] = r.selects_at_kink;
    act_params[r.name] = r.n_params;
  }
  act_ids["custom"] = int(Act::Custom);
  m.attr("ACTIVATION_IDS") = act_ids;
  m.attr("ACTIVATION_SELECTS") = act_selects;
  m.attr("ACTIVATION_NUM_PARAMS") = act_params;
  py::dict norm_ids;
  for (const NormRow& r : kNorms) norm_ids[r.name] = int(r.id);
  m.attr("NORM_IDS") = norm_ids;
}
