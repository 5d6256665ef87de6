"""gc.train and History: learning happens where it should (teacher regression, digits
with relu + He / Adam, the IRNN on the adding problem) and not where the gradients
vanish (deep sigmoid, standard init, SGD); what is recorded equals an independent
forward/backward at the same parameters; clipping, divergence, determinism, modes,
bad inputs (rejected before anything changes) and the plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradchain as gc
from conftest import same


@pytest.fixture(autouse=True)
def one_thread(restore_threads):
    # These models are tiny: one thread is fastest, and it keeps the suite quick on a
    # machine whose cores are busy (results do not depend on the thread count).
    gc.set_num_threads(1)


def teacher_data(n=256, dtype=np.float32):
    return gc.data.teacher(n=n, sizes=(8, 32, 1), seed=0, dtype=dtype)


def snapshot(model, opt):
    return ([p.copy() for _, p in model.named_parameters()],
            [b.copy() for _, b in model.named_buffers()], opt.state_dict(),
            getattr(model, "training", None))


def assert_unchanged(model, opt, snap):
    params, bufs, osd, training = snap
    for (name, p), p0 in zip(model.named_parameters(), params, strict=True):
        assert same(p, p0), name
    for (name, b), b0 in zip(model.named_buffers(), bufs, strict=True):
        assert same(b, b0), name
    now = opt.state_dict()
    assert now["step_count"] == osd["step_count"]
    assert now["param_groups"] == osd["param_groups"]
    assert getattr(model, "training", None) == training


# ----------------------------------------------------------------------------- learning
def test_loss_decreases_on_the_teacher_task():
    x, y = teacher_data()
    model = gc.MLP([8, 32, 32, 1], activation="tanh", seed=0)
    hist = gc.train(model, (x, y), gc.optim.Adam(model, lr=1e-2), epochs=15, batch_size=32)
    assert not hist.diverged
    # the teacher's targets have unit variance: predicting 0 scores ~1
    assert hist.epoch_loss[0] > 0.3
    assert hist.epoch_loss[-1] < 0.25 * hist.epoch_loss[0]
    # and on the whole data, evaluated independently
    final = float(np.mean((model.forward(x).astype(np.float64) - y) ** 2))
    assert final < 0.25 * hist.epoch_loss[0]


def test_digits_learns_with_relu_he_adam_and_not_with_deep_sigmoid_sgd():
    xtr, ytr, xte, yte = gc.data.digits(seed=0)
    good = gc.MLP([64] + [64] * 8 + [10], activation="relu", init="kaiming_normal", seed=0)
    h_good = gc.train(good, (xtr, ytr), gc.optim.Adam(good, lr=1e-3), epochs=5,
                      loss="cross_entropy", val=(xte, yte))
    # measured 0.88-0.92 over seeds 0-3 (chance is 0.10)
    assert h_good.val_accuracy[-1] > 0.75
    assert h_good.accuracy[-1] > 0.75
    # independent check of the reported test accuracy
    good.eval()
    acc = float(np.mean(np.argmax(good.forward(xte), axis=1) == yte))
    assert acc == pytest.approx(h_good.val_accuracy[-1], abs=1e-12)

    bad = gc.MLP([64] + [64] * 12 + [10], activation="sigmoid", init="torch_default", seed=0)
    h_bad = gc.train(bad, (xtr, ytr), gc.optim.SGD(bad, lr=0.1), epochs=3,
                     loss="cross_entropy", val=(xte, yte), record_every=5)
    assert h_bad.val_accuracy[-1] < 0.2  # measured 0.096-0.102
    # why: the gradient reaching the input layer is ~1e-10 of the output layer's
    ratio = h_bad.grad_norms[:, 0] / h_bad.grad_norms[:, -1]
    assert np.all(ratio < 1e-6)
    assert np.all(h_good.grad_norms[:, 0] / h_good.grad_norms[:, -1] > 1e-2)


def test_irnn_learns_the_adding_problem():
    x, y = gc.data.adding(T=10, n=512, seed=0)
    rnn = gc.RNN(2, 16, activation="relu", init="identity", output_size=1, seed=0)
    hist = gc.train(rnn, (x, y), gc.optim.Adam(rnn, lr=1e-3), epochs=15, batch_size=32,
                    clip=1.0)
    assert not hist.diverged
    assert hist.grad_norms.shape == (hist.num_steps, 10)
    assert hist.grad_norm_labels == [f"h{t}" for t in range(1, 11)]
    assert hist.weight_grad_norm_labels == ["weight_ih_l0", "weight_hh_l0", "readout.weight"]
    # below the 1/6 baseline of predicting 1, and well below where it started
    assert hist.epoch_loss[-1] < 0.8 * gc.data.ADDING_BASELINE_MSE
    assert hist.epoch_loss[-1] < 0.7 * hist.epoch_loss[0]


# ----------------------------------------------------------------------------- recording
def test_history_shapes_and_record_every():
    x, y = teacher_data(n=100)
    model = gc.MLP([8, 16, 16, 16, 1], seed=0)
    hist = gc.train(model, (x, y), gc.optim.SGD(model, lr=0.01), epochs=3, batch_size=32,
                    record_every=3)
    S = 3 * math.ceil(100 / 32)
    assert hist.num_steps == S == len(hist.loss) == len(hist.epoch) == len(hist.clipped)
    np.testing.assert_array_equal(hist.steps, np.arange(0, S, 3))
    R = len(hist.steps)
    assert hist.grad_norms.shape == (R, 4)  # a_0..a_3
    assert hist.weight_grad_norms.shape == (R, 4)
    assert hist.global_norm.shape == (R,)
    assert hist.epoch_loss.shape == (3,)
    np.testing.assert_array_equal(hist.epoch, np.repeat([0, 1, 2], 4))
    assert hist.accuracy is None and hist.val_loss is None and hist.val_accuracy is None
    assert not hist.clipped.any()
    assert hist.grad_norm_labels == ["a0", "a1", "a2", "a3"]
    # epoch loss: the batch-size weighted mean of its steps (batches of 32, 32, 32, 4)
    w = np.array([32, 32, 32, 4])
    for e in range(3):
        np.testing.assert_allclose(hist.epoch_loss[e], np.sum(hist.loss[4 * e:4 * e + 4] * w)
                                   / 100, rtol=1e-12)


def test_recorded_norms_equal_an_independent_backward():
    x, y = teacher_data(n=64)
    model = gc.MLP([8, 16, 16, 1], activation="tanh", seed=3)
    twin = gc.MLP([8, 16, 16, 1], activation="tanh", seed=3)
    opt, topt = gc.optim.SGD(model, lr=0.05, momentum=0.9), gc.optim.SGD(twin, lr=0.05,
                                                                         momentum=0.9)
    hist = gc.train(model, (x, y), opt, epochs=2, batch_size=16, shuffle=False)
    # replay by hand: the same batches in order, loss_and_grad then step
    for k in range(hist.num_steps):
        b = k % 4
        loss, rep = twin.loss_and_grad(x[16 * b:16 * b + 16], y[16 * b:16 * b + 16])
        assert hist.loss[k] == loss
        assert same(hist.grad_norms[k], rep.activation_grad_norms)
        assert same(hist.weight_grad_norms[k], rep.weight_grad_norms)
        assert hist.global_norm[k] == rep.global_norm
        topt.step()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert same(p, q), name


def test_clip_records_the_norm_before_and_applies_clipped_gradients():
    x, y = teacher_data(n=64, dtype=np.float64)
    model = gc.MLP([8, 16, 1], activation="tanh", dtype=np.float64, seed=0)
    twin = gc.MLP([8, 16, 1], activation="tanh", dtype=np.float64, seed=0)
    _, rep = twin.loss_and_grad(x, y)
    total = rep.global_norm
    max_norm = total / 10
    p0 = np.concatenate([p.ravel() for _, p in model.named_parameters()])
    hist = gc.train(model, (x, y), gc.optim.SGD(model, lr=1.0), epochs=1, batch_size=64,
                    clip=max_norm)
    assert hist.global_norm[0] == pytest.approx(total, rel=1e-12)   # before clipping
    assert hist.clipped.tolist() == [True]
    p1 = np.concatenate([p.ravel() for _, p in model.named_parameters()])
    step = p0 - p1  # lr = 1: the applied (clipped) gradient
    g = np.concatenate([g.ravel() for _, g in twin.named_grads()])
    np.testing.assert_allclose(step, g * (max_norm / (total + 1e-6)), rtol=1e-10, atol=1e-15)
    assert np.linalg.norm(step) == pytest.approx(max_norm, rel=1e-6)
    # a generous clip leaves the step alone and records no clipping
    model2 = gc.MLP([8, 16, 1], activation="tanh", dtype=np.float64, seed=0)
    h2 = gc.train(model2, (x, y), gc.optim.SGD(model2, lr=1.0), clip=10 * total, batch_size=64)
    assert h2.clipped.tolist() == [False]
    p2 = np.concatenate([p.ravel() for _, p in model2.named_parameters()])
    np.testing.assert_allclose(p0 - p2, g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_divergence_stops_and_flags_without_warning(kind):
    if kind == "mlp":
        x, y = teacher_data()
        model = gc.MLP([8, 32, 32, 1], activation="relu", init="kaiming_normal", seed=0)
        opt = gc.optim.SGD(model, lr=10.0)
    else:
        x, y = gc.data.adding(T=20, n=128, seed=0)
        model = gc.RNN(2, 32, activation="relu", init=gc.init.identity(gain=1.5),
                       output_size=1, seed=0)
        opt = gc.optim.SGD(model, lr=1.0)
    hist = gc.train(model, (x, y), opt, epochs=50, batch_size=32)
    assert hist.diverged
    k = hist.diverged_step
    assert k == hist.num_steps - 1 < 50 * 8 - 1
    assert not (math.isfinite(hist.loss[-1]) and math.isfinite(
        hist.global_norm[-1] if len(hist.global_norm) else 0.0))
    assert np.all(np.isfinite(hist.loss[:-1]))
    assert hist.steps[-1] == k
    assert opt.step_count == k  # the step that diverged was not applied
    assert all(np.isfinite(p).all() for _, p in model.named_parameters())
    assert len(hist.epoch_loss) == hist.epoch[-1] + 1
    json.dumps(hist.to_dict())  # NaN/Inf serialise as the JSON extensions Python writes


def test_determinism():
    x, y = teacher_data(n=96)

    def run(seed):
        model = gc.MLP([8, 16, 16, 1], norm="batch", seed=0)
        return gc.train(model, (x, y), gc.optim.Adam(model, lr=1e-2), epochs=3, batch_size=20,
                        seed=seed, val=(x[:40], y[:40])).to_dict()

    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert a["loss"] != c["loss"]


def test_modes_restored_and_val_in_eval_mode():
    x, y = teacher_data(n=96)
    model = gc.MLP([8, 16, 16, 1], norm="batch", seed=0)
    opt = gc.optim.Adam(model, lr=1e-2)
    model.eval()
    hist = gc.train(model, (x, y), opt, epochs=2, batch_size=32, val=(x[:50], y[:50]))
    assert model.training is False
    # trained in training mode: the running statistics moved
    assert any(not np.all(b == (0.0 if n.endswith("mean") else 1.0))
               for n, b in model.named_buffers())
    # val loss = an independent eval-mode forward after the last epoch
    val = float(np.mean((model.forward(x[:50]).astype(np.float64) - y[:50]) ** 2))
    assert hist.val_loss[-1] == pytest.approx(val, rel=1e-12)
    model.train()
    gc.train(model, (x, y), opt, epochs=1, batch_size=32)
    assert model.training is True


def test_rnn_cross_entropy_on_all_and_batch_first():
    rng = np.random.default_rng(0)
    N, T = 40, 6
    x = rng.normal(size=(N, T, 3)).astype(np.float32)
    tgt = (x[..., 0] > 0).astype(np.int64)            # (N, T): a per-step class
    rnn = gc.RNN(3, 8, output_size=2, batch_first=True, seed=0)
    hist = gc.train(rnn, (x, tgt), gc.optim.Adam(rnn, lr=1e-2), epochs=8, batch_size=10,
                    loss="cross_entropy", on="all", val=(x[:10], tgt[:10]))
    assert hist.kind == "rnn"
    assert hist.grad_norms.shape == (32, T)
    assert hist.accuracy.shape == (8,) and hist.val_accuracy.shape == (8,)
    assert hist.accuracy[-1] > 0.8
    rnn.forward(x[:10])
    acc = float(np.mean(np.argmax(rnn.outputs, axis=-1) == tgt[:10]))
    assert hist.val_accuracy[-1] == pytest.approx(acc, abs=1e-12)


def test_to_dataframe_and_to_dict():
    pytest.importorskip("pandas")
    x, y = teacher_data(n=64)
    model = gc.MLP([8, 16, 1], seed=0)
    hist = gc.train(model, (x, y), gc.optim.SGD(model, lr=0.01), epochs=2, batch_size=16,
                    record_every=2)
    df = hist.to_dataframe()
    assert df.shape == (8, 4 + 2)
    assert list(df.columns) == ["epoch", "loss", "clipped", "global_norm", "a0", "a1"]
    np.testing.assert_array_equal(df["loss"].to_numpy(), hist.loss)
    assert df["a0"].isna().to_numpy().tolist() == [False, True] * 4
    d = json.loads(json.dumps(hist.to_dict()))
    assert d["steps"] == [0, 2, 4, 6] and d["kind"] == "mlp" and d["diverged"] is False
    assert "History(kind='mlp', steps=8" in repr(hist)


def test_plot_renders_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from gradchain._plotting import pyplot

    x, y = teacher_data(n=64)
    model = gc.MLP([8] + [16] * 6 + [1], activation="sigmoid", seed=0)
    hist = gc.train(model, (x, y), gc.optim.SGD(model, lr=0.1), epochs=3, batch_size=16,
                    val=(x, y))
    path = tmp_path / "hist.png"
    fig, (ax_h, ax_l) = hist.plot(path=path)
    try:
        fig.canvas.draw()
        assert np.asarray(fig.canvas.buffer_rgba()).shape == (400, 1100, 4)  # 11 x 4 in, 100 dpi
        assert ax_l.get_yscale() == "log"
        assert len(ax_h.collections) == 1        # the heat map
        img = imread(path)
        h, w = img.shape[:2]
        # saved with a tight bounding box: within a few percent of the figure size
        assert 0.85 * 400 <= h <= 1.1 * 400 and 0.85 * 1100 <= w <= 1.1 * 1100
        rgb = img[..., :3].reshape(-1, 3)
        assert rgb.std() > 0.05
        assert len(np.unique((rgb * 255).astype(int), axis=0)) > 50  # a colour map, not blank
    finally:
        pyplot().close(fig)
    # into a given figure; no path, nothing saved
    plt = pyplot()
    fig2 = plt.figure()
    try:
        out, _ = hist.plot(fig=fig2)
        assert out is fig2
    finally:
        plt.close(fig2)


# ----------------------------------------------------------------------------- bad inputs
def _bad_calls(x, y):
    f64 = x.astype(np.float64)
    return [
        (dict(data=(x, y[:-1])), ValueError),                # N mismatch
        (dict(data=(x[:, :5], y)), ValueError),              # wrong feature count
        (dict(data=(f64, y)), TypeError),                    # wrong dtype, no silent cast
        (dict(data=(x, y.astype(np.float64))), TypeError),
        (dict(data=(x, y), loss="cross_entropy"), TypeError),   # float targets
        (dict(data=(x, np.zeros(len(x), np.int64) + 5), loss="cross_entropy"), ValueError),
        (dict(data=x), TypeError),
        (dict(data=(x,)), ValueError),
        (dict(data=(x, y, y)), ValueError),
        (dict(data="xy"), TypeError),
        (dict(data=(np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x)
                    .astype(np.float32), y)), ValueError),
        (dict(epochs=0), ValueError), (dict(epochs=1.5), TypeError),
        (dict(batch_size=0), ValueError), (dict(batch_size="64"), TypeError),
        (dict(loss="mae"), ValueError), (dict(loss=None), ValueError),
        (dict(record_every=0), ValueError), (dict(clip=-1.0), ValueError),
        (dict(clip="big"), TypeError), (dict(clip=float("nan")), ValueError),
        (dict(val=(x[:, :3], y)), ValueError), (dict(val=x), TypeError),
        (dict(shuffle=1), TypeError), (dict(progress="no"), TypeError),
        (dict(seed=-1), ValueError), (dict(on="first"), ValueError), (dict(on="all"), ValueError),
    ]


def test_bad_inputs_raise_before_anything_changes():
    x, y = teacher_data(n=64)
    model = gc.MLP([8, 16, 16, 1], norm="batch", seed=0)
    opt = gc.optim.Adam(model, lr=1e-2)
    gc.train(model, (x, y), opt, epochs=1, batch_size=16)  # some optimizer state to keep
    model.eval()
    snap = snapshot(model, opt)
    for kwargs, exc in _bad_calls(x, y):
        call = {"data": (x, y), "epochs": 1, "batch_size": 16, **kwargs}
        data = call.pop("data")
        with pytest.raises(exc):
            gc.train(model, data, opt, **call)
        assert_unchanged(model, opt, snap)
    # the wrong model / optimizer
    other = gc.MLP([8, 16, 16, 1], seed=1)
    with pytest.raises(ValueError, match="optimizer"):
        gc.train(model, (x, y), gc.optim.SGD(other))
    with pytest.raises(TypeError, match="optimizer"):
        gc.train(model, (x, y), "adam")
    with pytest.raises(TypeError, match="model"):
        gc.train("mlp", (x, y), opt)
    # batch norm cannot train on a last batch of 1 sample (as torch): refused up front
    with pytest.raises(ValueError, match="batch_size"):
        gc.train(model, (x[:33], y[:33]), opt, batch_size=16)
    with pytest.raises(ValueError, match="batch_size"):
        gc.train(model, (x[:1], y[:1]), opt, batch_size=16)
    with pytest.raises(ValueError, match="batch_size"):
        gc.train(model, (x, y), opt, batch_size=1)
    assert_unchanged(model, opt, snap)


def test_bad_rnn_inputs_raise_before_anything_changes():
    x, y = gc.data.adding(T=6, n=32, seed=0)
    rnn = gc.RNN(2, 8, output_size=1, seed=0)
    opt = gc.optim.SGD(rnn, lr=0.1, momentum=0.9)
    snap = snapshot(rnn, opt)
    for data, exc in [((x[:, :10], y), ValueError),             # batch sizes differ
                      ((x.transpose(1, 0, 2), y), ValueError),  # (N, T, I) without batch_first
                      ((x[..., :1], y), ValueError),
                      ((x[0], y), ValueError),
                      ((x, y[:, 0]), ValueError),
                      ((x, y.astype(np.float64)), TypeError)]:
        with pytest.raises(exc):
            gc.train(rnn, data, opt)
        assert_unchanged(rnn, opt, snap)
    with pytest.raises(ValueError):  # on="all" wants a (T, N, 1) target
        gc.train(rnn, (x, y), opt, on="all")
    assert_unchanged(rnn, opt, snap)


def test_progress_bar_can_be_silenced(capsys):
    x, y = teacher_data(n=32)
    model = gc.MLP([8, 4, 1], seed=0)
    gc.train(model, (x, y), gc.optim.SGD(model), batch_size=8, progress=False)
    gc.train(model, (x, y), gc.optim.SGD(model), batch_size=8)  # not a terminal: no bar
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
