// module.cpp — the only pybind11 file: exposes the core's chains as gradchain._core.
// Arrays arrive already validated by the Python layer (dtype, shape, contiguity,
// finiteness); the checks here only keep a direct caller of _core from crashing
// the process. The GIL is released around every compute call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "gradchain/blas.h"
#include "gradchain/chain.h"
#include "gradchain/dispatch.h"
#include "gradchain/report.h"
#include "gradchain/rnn.h"

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

py::dict report_dict(const MlpReport& r) {
  py::dict d;
  d["weight_grad_norms"] = vec(r.weight);
  d["bias_grad_norms"] = vec(r.bias);
  d["norm_weight_grad_norms"] = vec(r.norm_weight);
  d["norm_bias_grad_norms"] = vec(r.norm_bias);
  d["activation_grad_norms"] = vec(r.activation);
  add_common(d, r);
  return d;
}

// A 1-D NumPy view of `n` elements of core memory, kept alive by `owner`.
template <class T>
py::array_t<T> view(T* ptr, int64_t n, py::handle owner) {
  return py::array_t<T>({py::ssize_t(n)}, {py::ssize_t(sizeof(T))}, ptr, owner);
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
             py::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lock(c.mutex());
             return clip_grad_norm<T>(c.grad_spans(), max_norm, error_if_nonfinite);
           })
      .def("clip_grad_value",
           [](C& c, double v) {
             py::gil_scoped_release nogil;
             std::lock_guard<std::mutex> lock(c.mutex());
             clip_grad_value<T>(c.grad_spans(), v);
           })
      .def("clip_grad_norm_per_tensor",
           [](C& c, double max_norm) {
             std::vector<double> norms;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lock(c.mutex());
               norms = clip_grad_norm_per_tensor<T>(c.grad_spans(), max_norm);
             }
             return vec(norms);
           })
      .def("grad_norms", [](C& c) {
        std::vector<double> norms;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(c.mutex());
          for (auto& s : c.grad_spans()) norms.push_back(tensor_norm<T>(s.first, s.second));
        }
        return vec(norms);
      });
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
             if (norm < 0 || norm > 2) throw std::invalid_argument("bad norm id");
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
      .def_property_readonly("has_forward", &C::has_forward)
      .def_property_readonly("forward_batch", &C::forward_batch)
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
            {
              py::gil_scoped_release nogil;
              c.forward(xp, B, yp);
            }
            return y;
          },
          py::arg("x").noconvert())
      .def(
          "backward",
          [](C& c, const CArray<T>& gy, bool accumulate, bool report) {
            if (!c.has_forward()) throw std::logic_error("backward() called before forward()");
            check_2d<T>(gy, "grad_output", c.config().sizes.back(), c.forward_batch());
            CArray<T> dx({py::ssize_t(c.forward_batch()), py::ssize_t(c.config().sizes.front())});
            const T* gp = gy.data();
            T* dp = dx.mutable_data();
            MlpReport rep;
            {
              py::gil_scoped_release nogil;
              rep = c.backward(gp, dp, accumulate, report);
            }
            return py::make_tuple(report_dict(rep), dx);
          },
          py::arg("grad_output").noconvert(), py::arg("accumulate") = false,
          py::arg("report") = true);
  bind_shared<C, T>(cls);
}

py::dict rnn_report_dict(const RnnReport& r) {
  py::dict d;
  d["timestep_grad_norms"] = vec(r.timestep);
  d["weight_ih_grad_norm"] = r.weight_ih;
  d["weight_hh_grad_norm"] = r.weight_hh;
  d["bias_ih_grad_norm"] = r.bias_ih;
  d["bias_hh_grad_norm"] = r.bias_hh;
  d["readout_weight_grad_norm"] = r.readout_weight;
  d["readout_bias_grad_norm"] = r.readout_bias;
  d["h0_grad_norm"] = r.h0;
  add_common(d, r);
  return d;
}

template <class T>
void check_3d(const CArray<T>& a, const char* name, int64_t steps, int64_t B, int64_t F) {
  if (a.ndim() != 3 || a.shape(0) != steps || a.shape(1) != B || a.shape(2) != F)
    throw std::invalid_argument(std::string(name) + ": expected shape (" + std::to_string(steps) +
                                ", " + std::to_string(B) + ", " + std::to_string(F) + "), got " +
                                shape_str(a));
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
      .def_property_readonly("has_forward", &C::has_forward)
      .def_property_readonly("forward_steps", &C::forward_steps)
      .def_property_readonly("forward_batch", &C::forward_batch)
      .def(
          "forward",
          [](C& c, const CArray<T>& x, py::object h0) {
            const auto& cfg = c.config();
            if (x.ndim() != 3 || x.shape(2) != cfg.input_size)
              throw std::invalid_argument("x: expected shape (T, B, " +
                                          std::to_string(cfg.input_size) + "), got " +
                                          shape_str(x));
            const int64_t steps = x.shape(0), B = x.shape(1);
            const T* h0p = nullptr;
            CArray<T> h0a;
            if (!h0.is_none()) {
              h0a = h0.cast<CArray<T>>();
              check_2d<T>(h0a, "h0", cfg.hidden_size, B);
              h0p = h0a.data();
            }
            CArray<T> hs({py::ssize_t(steps), py::ssize_t(B), py::ssize_t(cfg.hidden_size)});
            py::object ys = py::none();
            T* yp = nullptr;
            if (cfg.output_size > 0) {
              CArray<T> ya({py::ssize_t(steps), py::ssize_t(B), py::ssize_t(cfg.output_size)});
              yp = ya.mutable_data();
              ys = ya;
            }
            const T* xp = x.data();
            T* hp = hs.mutable_data();
            {
              py::gil_scoped_release nogil;
              c.forward(xp, h0p, steps, B, hp, yp);
            }
            return py::make_tuple(hs, ys);
          },
          py::arg("x").noconvert(), py::arg("h0") = py::none())
      .def(
          "backward",
          [](C& c, py::object grad_hs, py::object grad_ys, bool accumulate, bool report) {
            if (!c.has_forward()) throw std::logic_error("backward() called before forward()");
            const auto& cfg = c.config();
            const int64_t steps = c.forward_steps(), B = c.forward_batch();
            CArray<T> gh, gy;
            const T* ghp = nullptr;
            const T* gyp = nullptr;
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
            CArray<T> dx({py::ssize_t(steps), py::ssize_t(B), py::ssize_t(cfg.input_size)});
            CArray<T> dh0({py::ssize_t(B), py::ssize_t(cfg.hidden_size)});
            T* dxp = dx.mutable_data();
            T* dhp = dh0.mutable_data();
            RnnReport rep;
            {
              py::gil_scoped_release nogil;
              rep = c.backward(ghp, gyp, dxp, dhp, accumulate, report);
            }
            return py::make_tuple(rnn_report_dict(rep), dx, dh0);
          },
          py::arg("grad_hs") = py::none(), py::arg("grad_ys") = py::none(),
          py::arg("accumulate") = false, py::arg("report") = true);
  bind_shared<C, T>(cls);
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

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "gradchain's compiled core (internal; use the gradchain package).";
  blas_init();
  py::register_exception<NonFiniteError>(m, "NonFiniteError", PyExc_RuntimeError);

  bind_mlp<float>(m, "MlpChainF32");
  bind_mlp<double>(m, "MlpChainF64");
  bind_rnn<float>(m, "RnnChainF32");
  bind_rnn<double>(m, "RnnChainF64");

  m.def("act_eval", &act_eval<float>, py::arg("act"), py::arg("p0"), py::arg("p1"),
        py::arg("x").noconvert());
  m.def("act_eval", &act_eval<double>, py::arg("act"), py::arg("p0"), py::arg("p1"),
        py::arg("x").noconvert());
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("max_num_threads", &max_threads, "The largest thread setting (set_num_threads).");
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
  m.attr("ACTIVATION_IDS") = py::dict(
      py::arg("identity") = int(Act::Identity), py::arg("sigmoid") = int(Act::Sigmoid),
      py::arg("tanh") = int(Act::Tanh), py::arg("relu") = int(Act::Relu),
      py::arg("leaky_relu") = int(Act::LeakyRelu), py::arg("elu") = int(Act::Elu),
      py::arg("selu") = int(Act::Selu), py::arg("gelu") = int(Act::Gelu),
      py::arg("gelu_tanh") = int(Act::GeluTanh), py::arg("softplus") = int(Act::Softplus),
      py::arg("silu") = int(Act::Silu), py::arg("hardtanh") = int(Act::Hardtanh),
      py::arg("custom") = int(Act::Custom));
}
