"""Smoke tests of the benchmark suite (gradchain.bench) on the --quick workloads.

Only gradchain and the NumPy peer run here (PyTorch and JAX are optional); timings are
not checked, only that the suite runs, checks agreement and reports what it should.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from gradchain import bench

ROW_FIELDS = {"label", "status", "median_s", "min_s", "iqr_s", "mean_s", "times_s", "gflops",
              "ratio", "first_call_s"}


def _quick_run(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"repeats": 2, "warmup": 1, "quick": True, "ceiling": False}
    args.update(kw)
    return bench.run(**args)


def test_quick_run_gradchain_numpy() -> None:
    res = _quick_run(peers=["gradchain", "numpy"])
    assert res["ok"] is True
    assert [w["name"] for w in res["workloads"]] == list(bench.WORKLOADS)
    m = res["machine"]
    for key in ("cpu", "cores", "gradchain_isa", "gradchain_threads", "openblas_core", "numpy",
                "date"):
        assert key in m
    assert res["config"]["peers"] == ["gradchain", "numpy"]
    for w in res["workloads"]:
        assert w["flops"] == bench.QUICK[w["name"]].flops() > 0
        assert "machine_load" in w
        assert set(w["peers"]) == {"gradchain", "numpy"}
        gc_row, np_row = w["peers"]["gradchain"], w["peers"]["numpy"]
        assert gc_row["status"] == "reference"
        assert np_row["status"] == "ok"
        for row in (gc_row, np_row):
            assert ROW_FIELDS <= set(row)
            assert len(row["times_s"]) == 2
            assert row["min_s"] <= row["median_s"]
            assert row["gflops"] > 0
        assert gc_row["ratio"] == 1.0
        agr = np_row["agreement"]
        assert agr["ok"] and agr["max_err"] <= agr["tolerance"] and not agr["failed"]
        wl = bench.QUICK[w["name"]]
        if isinstance(wl, bench.RNNWorkload):  # hs, 4 grads, weight and timestep norms
            assert w["kind"] == "rnn" and agr["checked"] == 7
            assert "timestep_grad_norms" in agr["errors"]
        elif isinstance(wl, bench.LSTMWorkload):  # LSTM / GRU: the same seven checks
            assert w["kind"] == wl.kind in ("lstm", "gru") and agr["checked"] == 7
            assert "timestep_grad_norms" in agr["errors"]
        else:
            assert agr["checked"] > 2 * wl.depth  # y, grads, norms
        assert agr["tolerance"] == (1e-3 if w["config"]["dtype"] == "float32" else 1e-9)
        if w["config"]["dtype"] == "float32":  # gradchain itself against float64
            assert gc_row["agreement"]["against"] == "float64 reference"
            assert gc_row["agreement"]["ok"]
    text = bench.format_table(res)
    for w in bench.WORKLOADS:
        assert w in text
    assert "NumPy (gradchain.reference)" in text and "DISAGREE" not in text
    json.dumps(res)  # JSON-ready


class _Perturbed:
    """The NumPy peer with one output made wrong by ``factor`` (a norm vector: one entry)."""

    def __init__(self, case: bench.Case, what: str, factor: float) -> None:
        self.inner = bench.BUILDERS[case.workload.kind]["numpy"](case)
        self.what, self.factor = what, factor

    def step(self) -> None:
        self.inner.step()

    def outputs(self) -> bench.Outputs:
        out = self.inner.outputs()
        if self.what == "y":
            out.y = out.y * self.factor
        elif self.what.endswith("_norms"):
            norms = getattr(out, self.what).copy()
            norms[len(norms) // 3] *= self.factor
            setattr(out, self.what, norms)
        else:
            out.grads[self.what] = out.grads[self.what] * self.factor
        return out


@pytest.mark.parametrize(
    ("workload", "what", "factor"),
    [("mlp-tanh", "layers.1.weight", 1.01),  # 1% off in one tensor: caught (smooth act.)
     ("mlp-tanh-f64", "y", 1 + 1e-6),
     ("mlp-deep-narrow", "layers.0.weight", 1.5),  # ReLU: beyond what rounding explains
     ("rnn-mid", "weight_hh_l0", 1.01),
     ("rnn-mid", "bias_ih_l0", 1.01),
     ("rnn-long-narrow", "timestep_grad_norms", 1.01)],  # one step's norm of 512
)
def test_disagreement_is_caught(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                workload: str, what: str, factor: float) -> None:
    monkeypatch.setitem(bench.PEERS, "bad", bench.PeerInfo("bad", "perturbed NumPy"))
    for kind in bench.BUILDERS:
        monkeypatch.setitem(bench.BUILDERS[kind], "bad", lambda c: _Perturbed(c, what, factor))
    res = _quick_run(workloads=[workload], peers=["gradchain", "numpy", "bad"])
    assert res["ok"] is False
    rows = res["workloads"][0]["peers"]
    assert rows["numpy"]["status"] == "ok"
    bad = rows["bad"]
    assert bad["status"] == "disagree"
    assert what in bad["agreement"]["failed"]
    assert bad["agreement"]["worst"] == what
    assert "median_s" in bad  # timed anyway, but marked
    assert "DISAGREE" in bench.format_table(res)
    assert "DISAGREES with gradchain" in capsys.readouterr().err


def test_rnn_workloads() -> None:
    """The RNN workloads of docs/WORKLOADS.md, their FLOPs and their --quick variants."""
    mid, long_ = bench.WORKLOADS["rnn-mid"], bench.WORKLOADS["rnn-long-narrow"]
    assert isinstance(mid, bench.RNNWorkload) and mid.kind == "rnn"
    assert (mid.steps, mid.batch, mid.input_size, mid.hidden_size) == (512, 32, 64, 256)
    assert (long_.steps, long_.batch, long_.input_size, long_.hidden_size) == (4096, 16, 32, 64)
    for w in (mid, long_):
        assert w.activation == "tanh" and w.dtype == "float32"
        I_, H = w.input_size, w.hidden_size
        assert w.flops() == 6 * w.steps * w.batch * (I_ * H + H * H)
        q = bench.QUICK[w.name]
        assert q.kind == "rnn" and q.steps < w.steps and q.hidden_size < w.hidden_size
        assert "RNN T" in w.describe() and w.config()["kind"] == "rnn"


def test_rnn_quick_gradchain_numpy() -> None:
    """The RNN rows: the NumPy peer agrees with gradchain on hs, every gradient, the weight
    and the per-timestep gradient norms; gradchain agrees with the float64 reference."""
    res = _quick_run(workloads=["rnn-mid", "rnn-long-narrow"], peers=["numpy"])
    assert res["ok"] is True
    for w in res["workloads"]:
        wl = bench.QUICK[w["name"]]
        assert w["kind"] == "rnn" and w["flops"] == wl.flops()
        np_row = w["peers"]["numpy"]
        assert np_row["status"] == "ok" and np_row["gflops"] > 0
        errs = np_row["agreement"]["errors"]
        assert set(errs) == {"y", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                             "weight_grad_norms", "timestep_grad_norms"}
        assert max(errs.values()) < 1e-5  # tanh: float32 rounding only, nothing excused
        gc_agr = w["peers"]["gradchain"]["agreement"]
        assert gc_agr["against"] == "float64 reference" and gc_agr["ok"]
        assert not gc_agr["excused"] and gc_agr["errors"].keys() == errs.keys()
    text = bench.format_table(res)
    assert "rnn-mid: RNN T 64" in text and "rnn-long-narrow" in text and "DISAGREE" not in text


def test_ab_on_one_model_prices_the_panel_gemm_and_the_report() -> None:
    """--panel-ab N / --report-ab N: gradchain's own model timed with the panel GEMM (the
    report) on and off, alternating, N rounds; both are left on."""
    from gradchain import _core

    assert _core._panel_gemm()
    res = _quick_run(workloads=["mlp-tanh", "rnn-long-narrow"], peers=["numpy"], panel_ab=4,
                     report_ab=3)
    assert res["ok"] is True and _core._panel_gemm()
    for w in res["workloads"]:
        sp = w["panel_speedup"]
        assert sp["rounds"] == 4 and len(sp["ratios"]) == 4
        assert sp["paired_median"] > 0 and sp["iqr"][0] <= sp["iqr"][1]
        ro = w["report_overhead_one_model"]
        assert ro["rounds"] == 3 and ro["paired_median"] > -1 and ro["iqr"][0] <= ro["iqr"][1]
    text = bench.format_table(res)
    assert text.count("gradchain's panel GEMM:") == 2
    assert text.count("measured on one model") == 2
    assert "panel_speedup" not in _quick_run(workloads=["mlp-tanh"], peers=[])["workloads"][0]
    with pytest.raises(ValueError, match="panel_ab"):
        _quick_run(panel_ab=-1)
    with pytest.raises(ValueError, match="report_ab"):
        _quick_run(report_ab=-1)


@pytest.mark.parametrize("peer", ["torch", "torch-grads", "jax"])
def test_rnn_optional_peers_agree(peer: str) -> None:
    pytest.importorskip("jax" if peer == "jax" else "torch")
    res = _quick_run(workloads=["rnn-mid"], peers=[peer], repeats=1, warmup=0)
    row = res["workloads"][0]["peers"][peer]
    assert row["status"] == "ok", row.get("note")
    errs = row["agreement"]["errors"]
    assert max(errs.values()) < 1e-5
    # the peers with a report compute the per-timestep norms; grads-only does not
    assert ("timestep_grad_norms" in errs) is (peer != "torch-grads")


def test_check_agreement_direct() -> None:
    w = bench.QUICK["mlp-tanh"]
    rng = np.random.default_rng(0)
    norms = np.array([1.0, 1e-6])
    ref = bench.Outputs(rng.standard_normal((4, 3)), {"layers.0.weight": rng.standard_normal(5)},
                        norms, np.array([2.0]))
    same = bench.Outputs(ref.y + 1e-6, dict(ref.grads), norms * (1 + 1e-6),
                         ref.weight_grad_norms)
    assert bench.check_agreement(ref, same, w).ok
    # a small norm that is wrong is caught even though the largest norm is right
    off = bench.Outputs(ref.y, dict(ref.grads), np.array([1.0, 2e-6]), ref.weight_grad_norms)
    agr = bench.check_agreement(ref, off, w)
    assert not agr.ok and agr.failed == ["activation_grad_norms"]
    missing = bench.Outputs(ref.y, {}, None, None)
    agr = bench.check_agreement(ref, missing, w)
    assert not agr.ok and agr.worst == "layers.0.weight"
    nan = bench.Outputs(ref.y * np.nan, dict(ref.grads))
    assert bench.check_agreement(ref, nan, w).failed == ["y"]


def test_kink_rounding_is_excused_only_when_it_looks_like_one() -> None:
    """A float32 ReLU kink flip changes one sample's contribution: a rank-one difference
    from float64. That is excused for ReLU workloads; a full-rank difference, a large one,
    or any difference with a smooth activation is not."""
    rng = np.random.default_rng(0)
    relu, tanh = bench.QUICK["mlp-wide"], bench.QUICK["mlp-tanh"]  # batch 64 and 32
    y = rng.standard_normal((4, 3))
    w = rng.standard_normal((40, 30))
    truth = bench.Outputs(y, {"layers.0.weight": w, "layers.0.bias": rng.standard_normal(40)})

    def with_weight(dw: np.ndarray, db: float = 0.0) -> bench.Outputs:
        g = truth.grads
        return bench.Outputs(y, {"layers.0.weight": g["layers.0.weight"] + dw,
                                 "layers.0.bias": g["layers.0.bias"] * (1 + db)})

    scale = np.abs(w).max()
    rank_one = 0.01 * scale * np.outer(rng.standard_normal(40), rng.standard_normal(30)) / 3
    full = 0.01 * scale * rng.standard_normal((40, 30)) / 3
    cases = [(rank_one, 0.004, relu, True), (full, 0.0, relu, False),
             (rank_one * 30, 0.0, relu, False), (rank_one, 0.0, tanh, False)]
    for dw, db, wl, excused in cases:
        flipped = with_weight(dw, db)  # gradchain, off from float64
        agr = bench.arbitrate(flipped, {"p": truth}, wl, truth=truth)
        assert agr["p"].ok is excused and agr["gradchain"].ok is excused
        assert agr["gradchain"].against == "float64 reference"
        if excused:
            assert set(agr["p"].excused) == {"layers.0.weight", "layers.0.bias"}
        else:
            assert "layers.0.weight" in agr["p"].failed


def _kink_case(norm: str | None) -> tuple[Any, Any, Any, Any, Any]:
    """A small ReLU MLP whose float64 reference has one unit (hidden layer 1) right at the
    kink, and a "float32 side" that rounded it to the other side: the reference with that
    unit's pre-activation mirrored, cast to float32 (what a real float32 flip gives). The
    unit is the first whose flip moves the weight-gradient norms beyond the tolerance."""
    from gradchain import reference
    from gradchain.bench import cases

    wl = bench.MLPWorkload("kinky", 16, 24, 4, 8, 32, activation="relu", norm=norm,
                           residual=norm is not None, init="kaiming_normal")
    base = bench.CASE_MAKERS["mlp"](wl, 3, 1)
    shift = "norms.1.bias" if norm else "layers.1.bias"
    tol = bench.tolerance_for("float32")
    for b, j in [(b, j) for b in range(4) for j in range(24)]:
        case = bench.Case(wl, base.x, base.grad_y, {k: v.copy() for k, v in base.state.items()},
                          1, base.extra)
        _y, cache = cases._mlp_forward64(case, np.float64)
        n = cache["layers"][1]["n"]
        if n[b, j] <= 0:
            continue
        # move the unit to ~1e-9 above the kink (the shift enters n column-wise)
        case.state[shift][j] -= np.float32(n[b, j] - 1e-9)
        truth, refit = bench.TRUTHS["mlp"](case, tol)
        _y, cache = cases._mlp_forward64(case, np.float64)
        n = cache["layers"][1]["n"]
        assert abs(n[b, j]) < 1e-6
        n[b, j] = -n[b, j]  # the float32 side's rounding: the other side of the kink
        grads, _dx, rep = reference.mlp_backward(cache, case.grad_y.astype(np.float64))
        side = bench.Outputs(cache["y"].astype(np.float32),
                             {k: v.astype(np.float32) for k, v in grads.items()},
                             np.asarray(rep["activation_grad_norms"]),
                             np.asarray(rep["weight_grad_norms"]))
        if bench.agreement_errors(truth, side, wl)["weight_grad_norms"] > 10 * tol:
            peer = bench.Outputs(truth.y.astype(np.float32),
                                 {k: v.astype(np.float32) for k, v in truth.grads.items()},
                                 truth.activation_grad_norms, truth.weight_grad_norms)
            return wl, truth, refit, side, peer
    raise AssertionError("no unit of the test network moves the norms by its flip")


@pytest.mark.parametrize("norm", [None, "batch"])
def test_kink_flip_in_the_report_norms_is_excused(norm: str | None) -> None:
    """Issue 13's false alarm: a float32 side that rounded one ReLU input to the other side of
    the kink has gradients the rank test excuses, but report norms (weight_grad_norms,
    activation_grad_norms) that only the float64 reference re-fitted with that flip explains;
    with the re-fit every peer is right, a wrong norm is still caught, and a smooth activation
    excuses nothing."""
    wl, truth, refit, side, peer = _kink_case(norm)
    tol = bench.tolerance_for("float32")
    errs = bench.agreement_errors(truth, side, wl)
    assert errs["weight_grad_norms"] > 10 * tol
    # without the re-fit: the false alarm (both against the reference and between the peers)
    agr = bench.arbitrate(side, {"p": peer}, wl, truth=truth)
    assert not agr["gradchain"].ok and not agr["p"].ok
    assert "weight_grad_norms" in agr["p"].failed
    # with it: every quantity the flip moved is excused, for gradchain and the peer alike
    agr = bench.arbitrate(side, {"p": peer}, wl, truth=truth, refit=refit)
    assert agr["gradchain"].ok and agr["p"].ok, (agr["gradchain"].failed, agr["p"].failed)
    assert "weight_grad_norms" in agr["p"].excused
    assert "weight_grad_norms" in agr["gradchain"].excused
    # the re-fit found exactly the flip: the side agrees with it to float32 rounding
    fitted = bench.agreement_errors(refit(side), side, wl)
    assert max(fitted.values()) < 1e-5
    # a correct side needs no flip: the re-fit of the peer is the reference itself
    again = refit(peer)
    assert again is not None
    for k, g in truth.grads.items():
        np.testing.assert_array_equal(again.grads[k], g)
    # a norm that is wrong on top of the flip is still caught
    bad = bench.Outputs(side.y, side.grads, side.activation_grad_norms,
                        side.weight_grad_norms * np.where(np.arange(5) == 3, 1.01, 1.0))
    agr = bench.arbitrate(bad, {"p": peer}, wl, truth=truth, refit=refit)
    assert "weight_grad_norms" in agr["p"].failed and not agr["gradchain"].ok
    # a smooth activation excuses nothing, re-fit or not
    from dataclasses import replace

    smooth = replace(wl, activation="tanh")
    agr = bench.arbitrate(side, {"p": peer}, smooth, truth=truth, refit=refit)
    assert not agr["p"].ok and not agr["p"].excused


def test_skipped_peer_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.PEERS, "absent",
                        bench.PeerInfo("absent", "not here", ("surely_no_such_module_xyz",)))
    res = _quick_run(workloads=["mlp-tanh"], peers=["absent"], repeats=1, warmup=0)
    rows = res["workloads"][0]["peers"]
    assert list(rows) == ["gradchain", "absent"]
    assert rows["absent"]["status"] == "skipped"
    assert "surely_no_such_module_xyz" in rows["absent"]["note"]
    assert res["ok"] is True


def test_unknown_names_rejected() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        bench.run(["nope"], quick=True, ceiling=False)
    with pytest.raises(ValueError, match="unknown peer"):
        bench.run(["mlp-tanh"], ["nope"], quick=True, ceiling=False)


def test_gemm_ceiling_small() -> None:
    c = bench.gemm_ceiling(np.float32, sizes=(64, 128), repeats=1)
    assert set(c) == {"64", "128", "best"} and c["best"] == max(c["64"], c["128"]) > 0


def test_main_json(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture) -> None:
    for v in bench._OPENBLAS_ENV:
        monkeypatch.delenv(v, raising=False)
    path = tmp_path / "r.json"
    rc = bench.main(["--quick", "-w", "mlp-tanh", "-p", "numpy", "--repeats", "1", "--warmup",
                     "0", "--no-ceiling", "--json", str(path)])
    assert rc == 0
    assert "mlp-tanh" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["ok"] and data["workloads"][0]["peers"]["numpy"]["status"] == "ok"
    assert bench.main(["--list"]) == 0


def test_main_reexecs_without_openblas_env(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    class Reexec(Exception):
        pass

    def fake_execve(path: str, args: list[str], env: dict[str, str]) -> None:
        calls.append((path, list(args), dict(env)))
        raise Reexec

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    monkeypatch.setattr(bench.os, "execve", fake_execve)
    with pytest.raises(Reexec):
        bench.main(["--quick", "--list"])
    (path, args, env), = calls
    assert args[1:] == ["-m", "gradchain.bench", "--quick", "--list"]
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert env[bench._UNSET_MARK] == "OPENBLAS_CORETYPE,OPENBLAS_L2_SIZE"
