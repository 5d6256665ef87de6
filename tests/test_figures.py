"""What the figures say (issue 10, item 12): a probe figure's title names the configuration
as well as the verdict; the demo figure draws each case as its measured verdict says."""

from __future__ import annotations

import pytest

from gradchain import _plotting, cli, demo

pytest.importorskip("matplotlib")


def _saved_figures(monkeypatch) -> list:
    figs = []
    real = _plotting.save

    def save(fig, path, dpi=100):
        figs.append(fig)
        real(fig, path, dpi)

    monkeypatch.setattr(_plotting, "save", save)
    return figs


@pytest.mark.parametrize("args, words", [
    (["--activation", "relu", "--init", "kaiming_normal", "--depth", "7", "--width", "12",
      "--norm", "batch", "--residual", "2", "--dtype", "float64", "--batch", "4"],
     ["MLP relu + kaiming_normal", "7 hidden layers of width 12", "batch norm",
      "residual every 2", "batch 4", "float64"]),
    (["--depth", "3", "--width", "8", "--sigma-w", "1.5", "--sigma-b", "0.1"],
     ["MLP tanh + normal(sigma_w=1.5, sigma_b=0.1)", "3 hidden layers of width 8", "float32"]),
    (["--model", "rnn", "--hidden", "6", "--steps", "9", "--init", "orthogonal",
      "--batch", "3"], ["RNN tanh + orthogonal W_hh", "hidden 6", "T = 9", "batch 3"]),
])
def test_probe_figure_title_names_the_configuration(args, words, tmp_path, monkeypatch,
                                                    capsys):
    figs = _saved_figures(monkeypatch)
    png = tmp_path / "p.png"
    assert cli.main(["probe", *args, "--png", str(png), "--quiet"]) == 0
    assert png.stat().st_size > 1000
    (fig,) = figs
    title = fig.axes[0].get_title()
    for w in words:
        assert w in title, (w, title)
    verdict = title.splitlines()[-1]
    assert verdict.split(":")[0] in ("healthy", "vanishing", "exploding")


def test_demo_figure_styles_agree_with_the_verdicts():
    """tanh + orthogonal W_hh vanishes over 200 steps: it must not be drawn as a working
    fix (solid) while its legend says vanishing."""
    from gradchain._plotting import pyplot

    mlp = demo.run_mlp(depth=20, width=16, batch=8)
    rnn = demo.run_rnn(T=200, batch=8, hidden=16)
    by = {r.short: r for r in rnn}
    assert by["tanh+orth"].kind == "fix"
    assert by["tanh+orth"].report.verdict().startswith("vanishing")
    fig, axes = demo.figure(mlp, rnn)
    try:
        seen = 0
        for ax in axes:
            for line in ax.get_lines():
                label = line.get_label()
                if label.startswith("_") or "(" not in label:
                    continue  # helper lines and the gap keys
                seen += 1
                verdict = label.rsplit("(", 1)[1].rstrip(")")
                style = line.get_linestyle()
                if verdict == "healthy":
                    assert style == "-", label
                else:
                    assert style in ("--", "-."), label
        assert seen == len(mlp) + len(rnn)
        title = axes[1].get_title()
        assert "dash-dot: a fix that falls short here" in title and "solid: healthy" in title
    finally:
        pyplot().close(fig)
