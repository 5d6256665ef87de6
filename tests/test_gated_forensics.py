"""Numerical forensics of the gated cells (issue 16 for gc.LSTM / gc.GRU): the health
statistics per step (dead and saturated hidden units, zero and subnormal entries of
dL/dh_t and the LSTM's dL/dc_t, mean |h_t| and |c_t|) and where a NaN/Inf was born
(forward, loss or backward, and at which stage), each exactly against the NumPy reference,
float32 and float64, on every ISA and bitwise for 1 and 2 threads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradchain as gc
from conftest import ref

COUNTS = ("dead_unit_fractions", "saturated_unit_fractions", "zero_grad_fractions",
          "subnormal_grad_fractions")
CELL_COUNTS = ("cell_zero_grad_fractions", "cell_subnormal_grad_fractions")
MEANS = ("mean_abs_activations", "mean_abs_cell_states")
CELLS = {"lstm": gc.LSTM, "gru": gc.GRU}


def _params(m: gc.Model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state_dict().items()}


def _reference(m: gc.Model, x: np.ndarray, grad_hs: np.ndarray | None = None,
               grad_ys: np.ndarray | None = None) -> tuple[dict, dict]:
    """The reference's (cache, report) of ``m`` on time-major ``x``."""
    if m.kind == "lstm":
        _, cache = ref.lstm_forward(_params(m), x)
        *_, rep = ref.lstm_backward(cache, grad_hs=grad_hs, grad_ys=grad_ys)
    else:
        _, cache = ref.gru_forward(_params(m), x)
        *_, rep = ref.gru_backward(cache, grad_hs=grad_hs, grad_ys=grad_ys)
    return cache, rep


def _check_health(rep: gc.GatedGradReport, rep_r: dict, dtype: type) -> None:
    lstm = rep.cell == "lstm"
    for f in COUNTS + (CELL_COUNTS if lstm else ()):
        np.testing.assert_array_equal(getattr(rep, f), rep_r[f], err_msg=f)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for f in MEANS if lstm else MEANS[:1]:
        np.testing.assert_allclose(getattr(rep, f), rep_r[f], rtol=tol, atol=0, err_msg=f)
    if not lstm:
        for f in CELL_COUNTS + MEANS[1:]:
            assert getattr(rep, f).size == 0 and rep_r[f].size == 0, f


def _origin(rep: gc.GatedGradReport) -> tuple:
    o = rep.nonfinite_origin
    return None if o is None else (o.phase, o.index, o.stage)


# ---------------------------------------------------------------------------- health
def _saturating(cell: str, dtype: type) -> tuple[gc.Model, np.ndarray, np.ndarray]:
    """H = 8 hidden units, one input. At steps 3-5 (x = 1) units 0-2 get every gate's
    pre-activation near +-20 (saturated: sigmoid' ~ 2e-9, tanh' ~ 2e-17) and units 3-4 near
    +-1000 (every derivative underflows to 0: dead); elsewhere (x = 0) nothing saturates."""
    H = 8
    m = CELLS[cell](1, H, dtype=dtype, seed=3)
    p = dict(m.named_parameters())
    G = len(m.GATES)
    w = np.full(H, 0.5)
    w[:3] = 20.0
    w[3:5] = -1000.0
    for k in range(G):
        p["weight_ih_l0"][k * H:(k + 1) * H, 0] = w * (1 if k % 2 else -1)
    p["weight_hh_l0"][...] *= 0.01
    p["bias_ih_l0"][...] = 0.0
    p["bias_hh_l0"][...] = 0.0
    m.invalidate()
    rng = np.random.default_rng(4)
    x = np.zeros((7, 6, 1), dtype)
    x[2:5] = 1.0
    g = rng.normal(size=(7, 6, H)).astype(dtype)
    return m, x, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saturated_and_dead_units_match_the_reference(cell, dtype):
    m, x, g = _saturating(cell, dtype)
    hs = m.forward(x)
    rep = m.backward(grad_hs=g)
    _, rep_r = _reference(m, x, g)
    _check_health(rep, rep_r, dtype)
    assert list(rep.dead_unit_fractions) == [0, 0, 2 / 8, 2 / 8, 2 / 8, 0, 0]
    assert list(rep.saturated_unit_fractions) == [0, 0, 5 / 8, 5 / 8, 5 / 8, 0, 0]
    assert rep.nonfinite_origin is None
    np.testing.assert_allclose(rep.mean_abs_activations,
                               np.abs(hs.astype(np.float64)).mean(axis=(1, 2)), rtol=1e-6)
    if cell == "lstm":
        np.testing.assert_allclose(rep.mean_abs_cell_states,
                                   np.abs(m.cell_states.astype(np.float64)).mean(axis=(1, 2)),
                                   rtol=1e-6)
    # the per-gate saturation (the forward's statistics) agrees with the unit counts: a
    # saturated unit has every gate saturated
    assert (rep.gate_saturation[:, 2:5] >= 5 / 8).all()


def test_saturation_run_in_the_verdict_table_and_dict():
    m, x, g = _saturating("lstm", np.float64)
    p = dict(m.named_parameters())
    p["weight_ih_l0"][:, 0] = np.sign(p["weight_ih_l0"][:, 0]) * 30.0  # every unit
    m.invalidate()
    m.forward(x)
    rep = m.backward(grad_hs=g)
    assert list(rep.saturated_unit_fractions[2:5]) == [1.0, 1.0, 1.0]
    assert "steps 3-5: 100 % of units saturated" in rep.verdict()
    text = rep.table(health=True)
    assert "health (step t" in text and "dc zeros" in text and "mean|c|" in text
    assert "health (step t" not in rep.table()
    d = rep.to_dict()
    assert d["saturated_unit_fractions"][2] == 1.0 and d["nonfinite_origin"] is None
    assert len(d["mean_abs_cell_states"]) == 7
    json.dumps(d)


def _underflowing(cell: str, dtype: type) -> tuple[gc.Model, np.ndarray, np.ndarray]:
    """W_hh = 0 (and, GRU, the update gate z = 0: h_t = n_t) so that dL/dh_t is exactly the
    given grad_hs: entries of 0, of subnormals and of normal numbers planted per step."""
    H = 6
    m = CELLS[cell](2, H, dtype=dtype, seed=5)
    p = dict(m.named_parameters())
    p["weight_hh_l0"][...] = 0.0
    if cell == "gru":
        p["bias_ih_l0"][H:2 * H] = -1000.0  # z = sigmoid(-1000) = 0 exactly
    m.invalidate()
    rng = np.random.default_rng(6)
    T, B = 6, 5
    x = rng.normal(size=(T, B, 2)).astype(dtype)
    tiny = np.finfo(dtype).tiny
    g = rng.normal(size=(T, B, H)).astype(dtype)
    g[1] = 0.0                                # step 2: all zeros
    g[2, :, :3] = tiny / 16                   # step 3: half subnormal
    g[3, :2] = tiny * 1e-3                    # step 4: 2 of 5 rows subnormal
    g[4, 0, 0] = 0.0                          # step 5: one zero
    g[5] = np.where(rng.random((B, H)) < 0.5, tiny / 4, 0.0).astype(dtype)
    return m, x, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_underflowing_gradients_count_zeros_and_subnormals(cell, dtype):
    m, x, g = _underflowing(cell, dtype)
    m.forward(x)
    rep = m.backward(grad_hs=g)
    _, rep_r = _reference(m, x, g)
    _check_health(rep, rep_r, dtype)
    a = np.abs(g)
    tiny = np.finfo(dtype).tiny
    np.testing.assert_array_equal(rep.zero_grad_fractions, (a == 0).mean(axis=(1, 2)))
    np.testing.assert_array_equal(rep.subnormal_grad_fractions,
                                  ((a > 0) & (a < tiny)).mean(axis=(1, 2)))
    assert rep.zero_grad_fractions[1] == 1.0 and rep.subnormal_grad_fractions[2] == 0.5
    if cell == "lstm":  # dL/dc_2 = dh_2 o tanh'(c_2) + dc_3 f_3: subnormal through dc_3
        assert rep.cell_subnormal_grad_fractions[2] > 0
        assert (rep.cell_zero_grad_fractions + rep.cell_subnormal_grad_fractions)[5] == \
            pytest.approx(1.0)


@pytest.mark.parametrize("isa", gc.available_isas())
def test_every_isa_matches_the_reference(isa, restore_isa):
    gc.set_isa(isa)
    assert gc.get_isa() == isa
    for cell in CELLS:
        for dtype in (np.float32, np.float64):
            for make in (_saturating, _underflowing):
                m, x, g = make(cell, dtype)
                m.forward(x)
                rep = m.backward(grad_hs=g)
                _check_health(rep, _reference(m, x, g)[1], dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_health_is_bitwise_for_any_thread_count(cell, restore_threads):
    rng = np.random.default_rng(7)
    m = CELLS[cell](8, 64, seed=0, output_size=3)
    p = dict(m.named_parameters())
    H = 64
    for k in range(len(m.GATES)):  # units 0-9 saturated at every step (x_0 >= 3)
        p["weight_ih_l0"][k * H:k * H + 10, 0] = 50.0
    m.invalidate()
    x = rng.normal(size=(30, 48, 8)).astype(np.float32)
    x[..., 0] = 3.0 + np.abs(x[..., 0])
    gy = rng.normal(size=(30, 48, 3)).astype(np.float32)
    gy[-3:] *= 1e-40  # dL/dh_t of the last steps subnormal
    reps = []
    for n in (1, 2):
        gc.set_num_threads(n)
        m.forward(x)
        reps.append(m.backward(grad_ys=gy))
    fields = COUNTS + MEANS + CELL_COUNTS
    for f in fields:
        assert np.array_equal(getattr(reps[1], f), getattr(reps[0], f)), f
    assert reps[0].saturated_unit_fractions.max() > 0
    assert reps[0].subnormal_grad_fractions.max() > 0
    # against the reference: the units exactly; the zero / subnormal entries of dL/dh_t
    # (products of subnormals, summed in another order by NumPy) to within a few entries.
    # (Not dL/dc_t here: the saturated units' c_t = t grows past 9, where the float32
    # tanh(c_t) rounds to 1 - and dL/dc_t's local term to 0 - one ulp apart in NumPy.)
    rep_r = _reference(m, x, None, gy)[1]
    for f in COUNTS[:2]:
        np.testing.assert_array_equal(getattr(reps[0], f), rep_r[f], err_msg=f)
    for f in COUNTS[2:]:
        np.testing.assert_allclose(getattr(reps[0], f), rep_r[f], atol=1e-3, err_msg=f)
    np.testing.assert_allclose(reps[0].mean_abs_activations, rep_r["mean_abs_activations"],
                               rtol=1e-5)


def test_health_switch_and_report_false():
    m, x, g = _saturating("lstm", np.float32)
    m.forward(x)
    full = m.backward(grad_hs=g)
    grads = {k: np.array(v) for k, v in m.named_grads()}
    m.forward(x)
    assert m.backward(grad_hs=g, report=False) is None
    assert m.nonfinite_origin is None
    m._core.forensics = False  # the benchmark's A/B switch
    m.forward(x)
    rep = m.backward(grad_hs=g)
    for f in COUNTS + MEANS + CELL_COUNTS:
        assert getattr(rep, f).size == 0, f
    for k, v in m.named_grads():
        assert np.array_equal(v, grads[k]), k
    assert np.array_equal(rep.timestep_grad_norms, full.timestep_grad_norms)
    assert rep.table(health=True)  # no health table, no error
    m._core.forensics = True
    m.forward(x)
    assert np.array_equal(m.backward(grad_hs=g).saturated_unit_fractions,
                          full.saturated_unit_fractions)


# ---------------------------------------------------------------------------- origins
def _big(dtype: type) -> float:
    return 1e30 if dtype == np.float32 else 1e200


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_overflow_is_born_at_the_chosen_step(cell, dtype):
    """x_t W_ih^T = +Inf (x_t = 1 at step 4 only, W_ih = max) and h_{t-1} W_hh^T = -Inf
    (h_{t-1} > 0, W_hh = -max; the LSTM's every gate, the GRU's n block; the GRU's update
    gate shut, z = 0): z_4 = Inf - Inf = NaN. Before step 4 x_t = 0, and an infinite
    recurrent product only saturates the gates."""
    H = 5
    m = CELLS[cell](2, H, dtype=dtype, seed=1)
    mx = np.finfo(dtype).max
    p = dict(m.named_parameters())
    p["bias_ih_l0"][...] = 5.0
    p["bias_hh_l0"][...] = 0.0
    p["weight_ih_l0"][...] = 0.0
    p["weight_hh_l0"][...] = 0.0
    rows = slice(0, 4 * H) if cell == "lstm" else slice(2 * H, 3 * H)
    p["weight_ih_l0"][rows] = mx
    p["weight_hh_l0"][rows] = -mx
    if cell == "gru":
        p["bias_ih_l0"][H:2 * H] = -50.0
    m.invalidate()
    x = np.zeros((6, 3, 2), dtype)
    x[3] = 1.0
    hs = m.forward(x)
    assert np.isfinite(hs[:3]).all() and not np.isfinite(hs[3]).all()
    rep = m.backward(grad_hs=np.ones_like(hs))
    assert _origin(rep) == ("forward", 4, "linear")
    assert rep.nonfinite_origin.where == "step"
    cache, rep_r = _reference(m, x, np.ones_like(hs))
    assert cache["forward_first_nonfinite"] == 4 and cache["forward_nonfinite_stage"] == "linear"
    assert rep.forward_first_nonfinite == 4
    assert "non-finite: NaN/Inf first at step" in rep.verdict() and "born in" in rep.verdict()
    assert "NaN/Inf born in the forward pass step 4" in rep.table(health=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_planted_in_a_weight_is_a_parameter_origin(cell, dtype):
    m = CELLS[cell](2, 5, dtype=dtype, seed=0, output_size=2)
    dict(m.named_parameters())["weight_hh_l0"][1, 1] = np.nan
    m.invalidate()
    x = np.ones((4, 3, 2), dtype)
    m.forward(x)
    rep = m.backward(grad_ys=np.ones((4, 3, 2), dtype))
    assert _origin(rep) == ("forward", 1, "parameter")
    cache, _ = _reference(m, x, None, np.ones((4, 3, 2), dtype))
    assert (cache["forward_first_nonfinite"], cache["forward_nonfinite_stage"]) == \
        (1, "parameter")
    # a NaN in the readout's weight: only the readout's output (T + 1)
    m2 = CELLS[cell](2, 5, dtype=dtype, seed=0, output_size=2)
    dict(m2.named_parameters())["readout.weight"][0, 0] = np.nan
    m2.invalidate()
    m2.forward(x)
    rep2 = m2.backward(grad_ys=np.ones((4, 3, 2), dtype))
    assert _origin(rep2) == ("forward", 5, "parameter")
    cache2, _ = _reference(m2, x, None, np.ones((4, 3, 2), dtype))
    assert (cache2["forward_first_nonfinite"], cache2["forward_nonfinite_stage"]) == \
        (5, "parameter")
    # the readout's product overflowing: "linear" at T + 1
    m3 = CELLS[cell](2, 5, dtype=dtype, seed=0, output_size=2)
    p3 = dict(m3.named_parameters())
    p3["bias_ih_l0"][...] = 5.0  # every h_t > 0 (the GRU: z = 0, h_t = n_t > 0)
    if cell == "gru":
        p3["bias_ih_l0"][5:10] = -50.0
    p3["weight_hh_l0"][...] = 0.0
    p3["readout.weight"][...] = np.finfo(dtype).max
    m3.invalidate()
    m3.forward(x)
    rep3 = m3.backward(grad_ys=np.ones((4, 3, 2), dtype))
    assert _origin(rep3) == ("forward", 5, "linear")
    assert _reference(m3, x, None, np.ones((4, 3, 2), dtype))[0][
        "forward_nonfinite_stage"] == "linear"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_log_of_zero_in_the_loss(cell):
    """Cross-entropy of a class whose probability underflows to 0: the loss is Inf while
    the forward pass and dL/dy are finite."""
    m = CELLS[cell](3, 4, dtype=np.float32, seed=0, output_size=2)
    p = dict(m.named_parameters())
    p["readout.weight"][...] = 0.0
    p["readout.bias"][...] = np.array([3e38, -3e38], np.float32)
    m.invalidate()
    value, rep = m.loss_and_grad(np.ones((5, 2, 3), np.float32), np.array([1, 1]),
                                 loss="cross_entropy")
    assert value == math.inf
    assert rep.forward_first_nonfinite is None and rep.first_nonfinite is None
    assert _origin(rep) == ("loss", None, "loss")
    assert m.nonfinite_origin == rep.nonfinite_origin
    assert "log of a zero probability" in str(rep.nonfinite_origin)


def _zero_forward(cell: str, dtype: type) -> gc.Model:
    """x = 0 and zero biases: every h_t = 0 (and c_t = 0), whatever W_hh."""
    m = CELLS[cell](2, 4, dtype=dtype, seed=2)
    p = dict(m.named_parameters())
    p["bias_ih_l0"][...] = 0.0
    p["bias_hh_l0"][...] = 0.0
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_product_overflow(cell, dtype):
    """A finite forward (every h_t = 0); dL/dh_T = big, W_hh = big: dL/dh_{T-1} = dz_T W_hh
    overflows in the product."""
    m = _zero_forward(cell, dtype)
    big = _big(dtype)
    dict(m.named_parameters())["weight_hh_l0"][...] = big
    m.invalidate()
    x = np.zeros((5, 3, 2), dtype)
    hs = m.forward(x)
    assert (hs == 0).all()
    g = np.zeros_like(hs)
    g[-1] = big
    rep = m.backward(grad_hs=g)
    assert _origin(rep) == ("backward", 4, "product")
    _, rep_r = _reference(m, x, g)
    assert rep_r["first_nonfinite"] == 4 and rep_r["backward_nonfinite_stage"] == "product"
    with pytest.raises(gc.NonFiniteError, match="born in the backward pass step 4"):
        gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_gate_backward_overflow_is_activation_backward(dtype):
    """GRU, a finite forward with a_n = -big/2 and b_n = b_hn = big (r = 1/2: z_n = 0, n = 0);
    dL/dh_T = 1e10 gives dz_r = dz_n b_n r (1 - r) = Inf at step T: dL/dh_{T-1} inherits
    it from the gates' backward."""
    m = _zero_forward("gru", dtype)
    big = 2e30 if dtype == np.float32 else 2e300
    H = 4
    p = dict(m.named_parameters())
    p["bias_ih_l0"][2 * H:] = -big / 2
    p["bias_hh_l0"][2 * H:] = big
    m.invalidate()
    x = np.zeros((5, 3, 2), dtype)
    hs = m.forward(x)
    assert (hs == 0).all()
    g = np.zeros_like(hs)
    g[-1] = 1e10
    rep = m.backward(grad_hs=g)
    assert rep.first_nonfinite == 4
    assert _origin(rep) == ("backward", 4, "activation_backward")
    _, rep_r = _reference(m, x, g)
    assert rep_r["first_nonfinite"] == 4
    assert rep_r["backward_nonfinite_stage"] == "activation_backward"
    assert "act'" in str(rep.nonfinite_origin)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_gradient_overflow(cell):
    """Every dL/dh_t finite but dW_ih = sum_t dz_t^T x_t overflows (x = 1e30, dz ~ 1e9)."""
    m = CELLS[cell](2, 4, dtype=np.float32, seed=2)
    dict(m.named_parameters())["weight_ih_l0"][...] = 1e-30
    m.invalidate()
    x = np.full((3, 2, 2), 1e30, np.float32)
    hs = m.forward(x)
    rep = m.backward(grad_hs=np.full_like(hs, 1e10))
    assert rep.first_nonfinite is None and rep.forward_first_nonfinite is None
    assert not math.isfinite(rep.weight_ih_grad_norm)
    assert _origin(rep) == ("backward", None, "weight_gradient")
    with pytest.raises(gc.NonFiniteError, match="parameter gradient"):
        gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True)


# ---------------------------------------------------------------------------- the lab
def test_history_cli_and_plot_carry_the_health(tmp_path, capsys):
    from gradchain import cli

    m = gc.LSTM(4, 8, output_size=1, seed=0)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(64, 10, 4)).astype(np.float32)  # (N, T, I) batch-first samples
    y = rng.normal(size=(64, 1)).astype(np.float32)
    m2 = gc.LSTM(4, 8, output_size=1, seed=0, batch_first=True)
    hist = gc.train(m2, (x, y), gc.optim.SGD(m2, lr=0.01), epochs=1, batch_size=16,
                    progress=False)
    R = len(hist.steps)
    assert hist.health["saturated_unit_fractions"].shape == (R, 10)
    assert np.isfinite(hist.health["mean_abs_activations"]).all()
    assert cli.main(["probe", "--model", "gru", "--steps", "6", "--hidden", "4",
                     "--health"]) == 0
    out = capsys.readouterr().out
    assert "health (step t" in out and "satur." in out
    assert cli.main(["probe", "--model", "lstm", "--steps", "6", "--hidden", "4",
                     "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["report"]
    assert len(d["dead_unit_fractions"]) == 6 and len(d["cell_zero_grad_fractions"]) == 6
    pytest.importorskip("matplotlib")
    from gradchain._plotting import pyplot

    m.forward(rng.normal(size=(6, 3, 4)).astype(np.float32))
    rep = m.backward(grad_ys=np.ones((6, 3, 1), np.float32))
    fig, _ = rep.plot(health=True, path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0
    assert fig.axes[1].get_ylabel() == "fraction"
    pyplot().close(fig)
    fig, ax = rep.plot_health()
    assert len(ax.get_lines()) == 4
    pyplot().close(fig)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_health_and_per_example_in_one_backward(cell, dtype):
    """per_example=True leaves the health statistics and the origins what they are without
    it (the two features share the fused step kernels and the report)."""
    m, x, g = _saturating(cell, dtype)
    m.forward(x)
    plain = m.backward(grad_hs=g)
    both = m.backward(grad_hs=g, per_example=True)
    assert both.per_example_grad_norms is not None and both.per_example_grad_norms.shape == (6,)
    for f in COUNTS + MEANS + CELL_COUNTS + ("timestep_grad_norms",):
        np.testing.assert_array_equal(getattr(both, f), getattr(plain, f), err_msg=f)
    assert both.nonfinite_origin is None
    assert "per-example" in both.table() and "health" in both.table(health=True)
    d = both.to_dict()
    assert len(d["per_example_grad_norms"]) == 6 and "saturated_unit_fractions" in d
    # a loss born non-finite is still named with per_example=True
    m2 = CELLS[cell](3, 4, dtype=np.float32, seed=0, output_size=2)
    p = dict(m2.named_parameters())
    p["readout.weight"][...] = 0.0
    p["readout.bias"][...] = np.array([3e38, -3e38], np.float32)
    m2.invalidate()
    value, rep = m2.loss_and_grad(np.ones((5, 2, 3), np.float32), np.array([1, 1]),
                                  loss="cross_entropy", per_example=True)
    assert value == math.inf and _origin(rep) == ("loss", None, "loss")
    assert rep.per_example_grad_norms is not None
