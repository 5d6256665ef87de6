"""GradReport.plot, RNNGradReport.plot and the demo figure: real PNGs of plausible size,
not blank, drawing exactly the report's numbers (gaps at zero / non-finite entries),
overlays on one ax, and bad inputs rejected before anything is drawn."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain as gc
from gradchain import demo

pytest.importorskip("matplotlib")
from matplotlib import image as mpimg  # noqa: E402

from gradchain._plotting import pyplot  # noqa: E402

plt = pyplot()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def mlp_report() -> gc.GradReport:
    rng = np.random.default_rng(0)
    model = gc.MLP([16] + [16] * 8 + [3], activation="tanh", seed=0)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    _, rep = model.loss_and_grad(x, rng.normal(size=(8, 3)).astype(np.float32))
    return rep


@pytest.fixture(scope="module")
def relu_report() -> gc.GradReport:
    rng = np.random.default_rng(1)
    model = gc.MLP([16] + [16] * 8 + [3], activation="relu", init="kaiming_normal", seed=1)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    _, rep = model.loss_and_grad(x, rng.normal(size=(8, 3)).astype(np.float32))
    return rep


@pytest.fixture(scope="module")
def rnn_report() -> gc.RNNGradReport:
    x, y = gc.tasks.adding_problem(25, 4, seed=0)
    model = gc.RNN(2, 8, output_size=1, seed=0)
    _, rep = model.loss_and_grad(x, y, loss="mse", on="last")
    return rep


def nonfinite_report() -> gc.GradReport:
    """L = 5: NaN, Inf and 0 among the norms, NaN first at layer 2."""
    return gc.GradReport(
        weight_grad_norms=np.array([np.nan, 1e-3, 0.0, 1e-2, 0.1, 1.0]),
        bias_grad_norms=np.zeros(6),
        activation_grad_norms=np.array([np.nan, np.inf, np.nan, 0.0, 1e-2, 1.0]),
        first_nonfinite=2)


def check_png(path, min_wh=(150, 150), max_wh=(2000, 2000), colours=5) -> np.ndarray:
    """A real RGBA image within plausible bounds (saved with bbox_inches="tight", so
    not exactly figsize * dpi), not blank: pixel variance > 0 and several colours."""
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert min_wh[0] <= w <= max_wh[0] and min_wh[1] <= h <= max_wh[1], img.shape
    assert float(img[..., :3].var()) > 0
    distinct = np.unique((img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(distinct) >= colours, len(distinct)
    return img


def logged(values: np.ndarray) -> np.ndarray:
    """What the plot must draw: the norm where finite and > 0, NaN (a gap) elsewhere."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def data_lines(ax) -> list:
    """The series lines: labelled and holding data (not the bottom markers, the axvlines
    nor the empty legend keys for the gaps)."""
    return [ln for ln in ax.lines
            if not ln.get_label().startswith("_") and len(ln.get_xdata()) > 0]


# ------------------------------------------------------------------ GradReport.plot
def test_grad_report_plot_png(mlp_report, tmp_path):
    path = tmp_path / "rep.png"
    fig, ax = mlp_report.plot(path=path)
    w, h = fig.get_size_inches() * fig.dpi
    img = check_png(path, min_wh=(0.5 * w, 0.5 * h), max_wh=(1.2 * w, 1.2 * h))
    assert img.shape[0] < img.shape[1]  # landscape as the 7 x 4 inch figure
    assert ax.get_yscale() == "log"
    assert ax.get_title() == mlp_report.verdict()
    act, wgt = data_lines(ax)
    L = mlp_report.depth
    np.testing.assert_array_equal(act.get_xdata(), np.arange(L + 1))
    np.testing.assert_array_equal(act.get_ydata(), mlp_report.activation_grad_norms)
    np.testing.assert_array_equal(wgt.get_ydata(), mlp_report.weight_grad_norms)
    assert act.get_color() == wgt.get_color() and act.get_linestyle() != wgt.get_linestyle()
    fig.canvas.draw()
    ticks = {t.get_position()[0]: t.get_text() for t in ax.get_xticklabels()}
    assert ticks[0] == "input" and ticks[L] == "out"


def test_grad_report_plot_which_and_bias(mlp_report):
    fig, ax = mlp_report.plot(which=("bias", "activation", "bias"))
    lines = data_lines(ax)
    assert len(lines) == 2  # duplicates dropped, order kept
    np.testing.assert_array_equal(lines[0].get_ydata(), mlp_report.bias_grad_norms)
    np.testing.assert_array_equal(lines[1].get_ydata(), mlp_report.activation_grad_norms)
    fig, ax = mlp_report.plot(which="weight")
    (line,) = data_lines(ax)
    np.testing.assert_array_equal(line.get_ydata(), mlp_report.weight_grad_norms)
    assert ax.get_ylabel() == "||dL/dW_l||"


def test_overlay_on_one_ax(mlp_report, relu_report, tmp_path):
    fig, ax = plt.subplots()
    f1, a1 = mlp_report.plot(ax=ax, which="activation", label="tanh")
    f2, a2 = relu_report.plot(ax=ax, which="activation", label="relu", path=tmp_path / "o.png",
                              linestyle="--", lw=2.5)
    assert a1 is ax and a2 is ax and f1 is fig and f2 is fig
    assert len(plt.get_fignums()) == 1  # no figure made behind the caller's back
    tanh, relu = data_lines(ax)
    np.testing.assert_array_equal(tanh.get_ydata(), mlp_report.activation_grad_norms)
    np.testing.assert_array_equal(relu.get_ydata(), relu_report.activation_grad_norms)
    assert tanh.get_color() != relu.get_color()
    assert relu.get_linestyle() == "--" and relu.get_linewidth() == 2.5
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("tanh (") and legend[1].startswith("relu (")
    assert mlp_report.verdict().split(":")[0] in legend[0]
    assert ax.get_title() == ""  # with labels the verdict goes to the legend
    check_png(tmp_path / "o.png")


def test_nonfinite_report_draws_gaps(tmp_path):
    rep = nonfinite_report()
    path = tmp_path / "nan.png"
    fig, ax = rep.plot(path=path, which=("activation", "weight", "bias"))
    check_png(path)
    assert ax.get_title() == "non-finite: NaN/Inf first at layer 2"
    act, wgt = data_lines(ax)[:2]
    np.testing.assert_array_equal(act.get_ydata(), logged(rep.activation_grad_norms))
    np.testing.assert_array_equal(wgt.get_ydata(), logged(rep.weight_grad_norms))
    assert len(data_lines(ax)) == 3
    # markers at the bottom for 0 (v) and NaN/Inf (x), and the first_nonfinite line
    markers = [ln for ln in ax.lines if ln.get_label().startswith("_")]
    xs: dict[str, list[int]] = {"v": [], "x": []}
    for m in markers:
        if m.get_marker() in xs:
            xs[m.get_marker()] += np.asarray(m.get_xdata()).tolist()
    # zeros: activation at 3, weight at 2, every bias; NaN/Inf: activation 0-2, weight 0
    assert sorted(xs["v"]) == [0, 1, 2, 2, 3, 3, 4, 5]
    assert sorted(xs["x"]) == [0, 0, 1, 2]
    assert any(np.allclose(m.get_xdata(), [2, 2]) for m in markers if m.get_linestyle() == ":")


@pytest.mark.parametrize("values", [np.full(4, np.nan), np.zeros(4), np.full(4, np.inf)])
def test_all_nonfinite_or_zero_report(values, tmp_path):
    rep = gc.GradReport(values.copy(), values.copy(), values.copy(),
                        first_nonfinite=None if np.isfinite(values).all() else 3)
    rep.plot(path=tmp_path / "x.png", which=("activation", "weight", "bias"))
    check_png(tmp_path / "x.png", colours=3)


# ------------------------------------------------------------------ RNNGradReport.plot
def test_rnn_report_plot(rnn_report, tmp_path):
    path = tmp_path / "rnn.png"
    fig, ax = rnn_report.plot(path=path)
    check_png(path)
    (line,) = data_lines(ax)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, rnn_report.steps + 1))
    np.testing.assert_array_equal(line.get_ydata(), rnn_report.timestep_grad_norms)
    assert ax.get_yscale() == "log" and ax.get_title() == rnn_report.verdict()
    assert ax.get_xlabel() == "timestep t"


def test_rnn_overlay_and_nonfinite(rnn_report, tmp_path):
    bad = gc.RNNGradReport(timestep_grad_norms=np.array([np.nan, 0.0, 1e-30, 1e-3, np.inf, 1.0]),
                           first_nonfinite=5)
    fig, ax = rnn_report.plot(label="ok")
    bad.plot(ax=ax, label="bad", path=tmp_path / "r.png")
    check_png(tmp_path / "r.png")
    ok_line, bad_line = data_lines(ax)
    np.testing.assert_array_equal(bad_line.get_ydata(), logged(bad.timestep_grad_norms))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"ok ({rnn_report.verdict().split(':')[0]})", "bad (non-finite)", "norm = 0 (gap)",
        "NaN/Inf (gap)"]


# ------------------------------------------------------------------ the demo figure
def test_demo_figure(tmp_path):
    mlp = demo.run_mlp(depth=12, width=16, batch=8)
    rnn = demo.run_rnn(T=20, batch=4, hidden=8)
    path = tmp_path / "demo.png"
    fig, axes = demo.figure(mlp, rnn, path=path)
    w, h = fig.get_size_inches() * fig.dpi
    img = check_png(path, min_wh=(0.6 * w, 0.6 * h), max_wh=(1.2 * w, 1.2 * h), colours=8)
    assert img.shape[1] > 2 * img.shape[0]  # two panels side by side
    ax_mlp, ax_rnn = axes
    lines = data_lines(ax_mlp)
    assert len(lines) == len(demo.mlp_cases())
    for (case, rep), line in zip(mlp, lines, strict=True):
        assert line.get_linestyle() == demo.line_style(case.kind, rep.verdict())
        np.testing.assert_array_equal(line.get_ydata(), logged(rep.activation_grad_norms))
        assert line.get_label().startswith(case.label)
    rlines = data_lines(ax_rnn)
    assert len(rlines) == len(demo.rnn_cases())
    for r, line in zip(rnn, rlines, strict=True):
        assert line.get_linestyle() == demo.line_style(r.kind, r.report.verdict())
        np.testing.assert_array_equal(line.get_ydata(), logged(r.report.timestep_grad_norms))
    assert ax_mlp.get_legend() is not None and ax_rnn.get_legend() is not None


def test_demo_figure_into_given_axes_and_bad_inputs(tmp_path):
    mlp = demo.run_mlp(depth=3, width=8, batch=4)
    rnn = demo.run_rnn(T=5, batch=4, hidden=4)
    fig, axes = plt.subplots(1, 2)
    f, a = demo.figure(mlp, rnn, axes=axes, title="mine")
    assert f is fig and a is axes and fig._suptitle.get_text() == "mine"
    with pytest.raises(TypeError, match="axes"):
        demo.figure(mlp, rnn, axes=[axes[0]])
    with pytest.raises(TypeError, match="mlp"):
        demo.figure(rnn, rnn)
    with pytest.raises(TypeError, match="rnn"):
        demo.figure(mlp, mlp)
    with pytest.raises(ValueError, match="does not exist"):
        demo.figure(mlp, rnn, path=tmp_path / "missing" / "d.png")


# ------------------------------------------------------------------ bad inputs
def test_missing_folder_is_value_error_and_draws_nothing(mlp_report, rnn_report, tmp_path):
    fig, ax = plt.subplots()
    n_figs = len(plt.get_fignums())
    for rep in (mlp_report, rnn_report):
        with pytest.raises(ValueError, match="path: folder .* does not exist"):
            rep.plot(ax=ax, path=tmp_path / "nope" / "x.png")
        with pytest.raises(ValueError, match="path: expected a file name"):
            rep.plot(ax=ax, path=tmp_path)
        with pytest.raises(ValueError, match="does not exist"):
            rep.plot(path=str(tmp_path / "nope" / "x.png"))
    assert len(ax.lines) == 0 and len(plt.get_fignums()) == n_figs
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"ax": "axes"}, TypeError, "ax: expected a matplotlib Axes"),
    ({"ax": 3}, TypeError, "ax"),
    ({"path": 3}, TypeError, "path: expected a str or os.PathLike"),
    ({"label": 1.5}, TypeError, "label: expected a str"),
    ({"which": "gamma"}, ValueError, "which: expected one or more of"),
    ({"which": ()}, ValueError, "which"),
    ({"which": 3}, TypeError, "which"),
    ({"which": ["activation", 2]}, TypeError, "which"),
    ({"markersize_": 2}, TypeError, "not a line property"),
    ({"transform": None}, TypeError, "not a line property"),
    ({"c": "red", "color": "blue"}, TypeError, "line_kwargs"),
])
def test_bad_arguments(mlp_report, kwargs, exc, match):
    before = mlp_report.to_dict()
    n_figs = len(plt.get_fignums())
    with pytest.raises(exc, match=match):
        mlp_report.plot(**kwargs)
    assert len(plt.get_fignums()) == n_figs  # nothing created
    assert mlp_report.to_dict() == before


def test_rnn_bad_arguments(rnn_report):
    with pytest.raises(TypeError, match="ax"):
        rnn_report.plot(ax=object())
    with pytest.raises(TypeError, match="label"):
        rnn_report.plot(label=3)
    with pytest.raises(TypeError):
        rnn_report.plot(which="activation")  # the RNN plot has a single quantity


@settings(max_examples=30)
@given(which=st.one_of(
    st.sampled_from(["activation", "weight", "bias", "", "Activation", "loss"]),
    st.lists(st.sampled_from(["activation", "weight", "bias", "norm", ""]), max_size=4)))
def test_which_fuzz(mlp_report, which):
    fig, ax = plt.subplots()
    valid = ["activation", "weight", "bias"]
    items = [which] if isinstance(which, str) else which
    try:
        mlp_report.plot(ax=ax, which=which)
    except ValueError as e:
        assert "which" in str(e)
        assert not items or any(w not in valid for w in items)
        assert len(ax.lines) == 0
    else:
        assert items and all(w in valid for w in items)
        assert len(data_lines(ax)) == len(set(items))
    finally:
        plt.close(fig)


def test_without_matplotlib(mlp_report, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="gradchain\\[plot\\]"):
        mlp_report.plot()


def test_plot_does_not_touch_the_report(relu_report):
    before = {k: np.array(v, copy=True) for k, v in vars(relu_report).items()
              if isinstance(v, np.ndarray)}
    relu_report.plot(which=("activation", "weight", "bias"))
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(relu_report, k), v)
    assert math.isfinite(relu_report.ratio)
