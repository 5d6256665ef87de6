"""The input-output Jacobian and its singular values (docs/CONVENTIONS.md, "Signal
propagation").

    import gradchain as gc
    J = gc.jacobian(mlp, x)                          # (out, in) at one input, forward mode
    sp = gc.jacobian_spectrum(mlp, x)                # exact SVD: a JacobianSpectrum
    sp = gc.jacobian_spectrum(mlp, x, k=10, method="lanczos")   # top 10, core JVP/VJP
    by_depth = gc.jacobian_spectrum(mlp, x, at=[8, 16, 32])     # da_l/dx at chosen depths
    gc.spectrum.plot_spectra(by_depth, path="spectra.png")
    gc.theory.jacobian_moments("tanh", 1.0, 0.05, depth=32)     # the prediction

For an RNN, ``at`` names time steps: ``dh_T/dh_t``. Lanczos runs on ``J^T J`` with one
Jacobian-vector product and one vector-Jacobian product per step through the model
linearised in the core (``model.linearize``, MLP), with full reorthogonalisation; its Ritz
values are the top singular values squared, and over several random starts their weights
give the spectral density (stochastic Lanczos quadrature).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._plotting import axes, check_path

__all__ = ["JacobianSpectrum", "jacobian", "jacobian_spectrum", "plot_spectra"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _check_model(model: Any) -> None:
    from .models import Model, describe_kinds

    if not isinstance(model, Model):
        raise TypeError(f"model: expected a {describe_kinds('gc.')}, got "
                        f"{type(model).__name__}")


def jacobian(model: Any, x: Any, at: Any = None) -> np.ndarray | dict[int, np.ndarray]:
    """The Jacobian of the model's function at one input, computed in the core.

    MLP: ``dy/dx (out, in)`` at ``x`` (``(in,)`` or ``(1, in)``), in forward mode (the
    identity pushed through the chain as a batch of tangents); ``at=l`` (``0..L+1``) the
    partial Jacobian ``da_l/dx``. RNN: ``dh_T/dh_t (H, H)`` at one sequence, ``at=t``
    (``0..T``, default 0). A sequence ``at`` gives ``{at: Jacobian}``. Batch norm must be
    in eval mode (its training-mode Jacobian couples the batch).
    """
    _check_model(model)
    return model.jacobian(x, at=at)


@dataclass
class JacobianSpectrum:
    """Singular values of a Jacobian (``gc.jacobian_spectrum``).

    Attributes
    ----------
    singular_values : (k,) float64
        Descending: all ``min(shape)`` of them (exact), or the top ``k`` (Lanczos).
    shape : (int, int)
        The Jacobian's shape.
    method : str
        "exact" or "lanczos".
    at : int or None
        The layer (MLP) or step (RNN) it belongs to (None: the full Jacobian).
    density : (nodes, weights) or None
        Lanczos: the stochastic-Lanczos-quadrature estimate of the density of the
        squared singular values (Ritz values and weights summing to 1 per start,
        averaged over the starts).
    """

    singular_values: np.ndarray
    shape: tuple[int, int]
    method: str = "exact"
    at: int | None = None
    density: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def moment(self, k: int = 1) -> float:
        """``mean(s^(2k))`` over the singular values (exact: all ``min(shape)``; Lanczos:
        from the density)."""
        if self.method == "lanczos" and self.density is not None:
            nodes, w = self.density
            return float(np.sum(w * nodes ** k) / np.sum(w))
        return float(np.mean(self.singular_values.astype(np.float64) ** (2 * k)))

    @property
    def mean_sq(self) -> float:
        """``mean(s^2)``: what ``gc.theory.jacobian_moments`` predicts as the mean."""
        return self.moment(1)

    @property
    def var_sq(self) -> float:
        """``var(s^2)``: the predicted variance's measured counterpart."""
        return self.moment(2) - self.moment(1) ** 2

    @property
    def condition(self) -> float:
        """``s_max / s_min`` of the values held (inf when the smallest is 0)."""
        s = self.singular_values
        return math.inf if s[-1] == 0 else float(s[0] / s[-1])

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types: JSON-ready."""
        return {"singular_values": [float(v) for v in self.singular_values],
                "shape": list(self.shape), "method": self.method, "at": self.at,
                "mean_sq": self.mean_sq, "var_sq": self.var_sq}

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None,
             bins: int = 50, label: str | None = None) -> tuple[Any, Any]:
        """A histogram of the singular values (needs matplotlib). Returns ``(fig, ax)``."""
        return plot_spectra({self.at if self.at is not None else 0: self}, ax=ax, path=path,
                            bins=bins, labels=None if label is None else [label])


def _lanczos(matvec: Any, n: int, steps: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos on a symmetric PSD operator of size n with full reorthogonalisation:
    (Ritz values ascending, squared first components of their vectors)."""
    Q = np.zeros((steps + 1, n))
    alpha, beta = np.zeros(steps), np.zeros(steps)
    q = rng.standard_normal(n)
    Q[0] = q / np.linalg.norm(q)
    m = steps
    for j in range(steps):
        w = matvec(Q[j])
        alpha[j] = float(w @ Q[j])
        for _ in range(2):  # twice is enough (Kahan): keeps Q orthogonal to rounding
            w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
        beta[j] = float(np.linalg.norm(w))
        if beta[j] <= 1e-10 * max(abs(alpha[:j + 1]).max(), 1e-300):
            m = j + 1  # an invariant subspace: the Ritz values are exact
            break
        Q[j + 1] = w / beta[j]
    T = np.diag(alpha[:m]) + np.diag(beta[:m - 1], 1) + np.diag(beta[:m - 1], -1)
    vals, vecs = np.linalg.eigh(T)
    return np.clip(vals, 0.0, None), vecs[0] ** 2


def jacobian_spectrum(model: Any, x: Any, k: int | None = None, method: str = "exact",
                      at: Any = None, *, steps: int | None = None, starts: int = 1,
                      seed: int = 0) -> JacobianSpectrum | dict[int, JacobianSpectrum]:
    """Singular values of the model's Jacobian at one input (see :func:`jacobian`).

    Parameters
    ----------
    model, x, at :
        As :func:`jacobian`; a sequence ``at`` gives ``{at: JacobianSpectrum}`` (the
        "spectrum versus depth" figure: ``at`` layers of an MLP, steps of an RNN).
    k : int or None
        Keep the top ``k`` singular values (exact: all by default; Lanczos: default 10).
    method : "exact" or "lanczos"
        "exact": the full Jacobian from the core, then an SVD (fine up to a few thousand
        wide). "lanczos" (MLP, full Jacobian only): Lanczos on ``J^T J`` through the
        model linearised in the core, one JVP and one VJP per step, no Jacobian formed.
    steps : int or None
        Lanczos steps (default ``min(in, max(2 k, k + 20))``).
    starts : int
        Lanczos: random starting vectors; the density averages over them.
    seed : int
        Lanczos: the starting vectors' seed.
    """
    _check_model(model)
    if method not in ("exact", "lanczos"):
        raise ValueError(f"method: expected 'exact' or 'lanczos', got {method!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer))
                          or k < 1):
        raise ValueError(f"k: expected None or an int >= 1, got {k!r}")
    for name, v in (("starts", starts), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (
                1 if name == "starts" else 0):
            raise ValueError(f"{name}: expected an int >= {1 if name == 'starts' else 0}, "
                             f"got {v!r}")
    if method == "exact":
        J = model.jacobian(x, at=at)
        if isinstance(J, dict):
            return {t: _exact(Jt, k, t) for t, Jt in J.items()}
        return _exact(J, k, None if at is None else int(at))
    if at is not None:
        raise ValueError("at: method='lanczos' works on the full Jacobian (at=None); use "
                         "method='exact' for the partial ones")
    a = np.asarray(x)
    try:
        lin = model.linearize(a.reshape(1, -1) if a.ndim == 1 else a)
    except NotImplementedError:
        raise ValueError(f"method: 'lanczos' needs a model that linearises in the core "
                         f"(gc.MLP), got {type(model).__name__}; use method='exact'") from None
    if lin.batch != 1:
        raise ValueError(f"x: expected one input, got a batch of {lin.batch}")
    n, m_out = lin.sizes[0], lin.sizes[-1]
    kk = 10 if k is None else int(k)
    kk = min(kk, n, m_out)
    if steps is None:
        steps = min(n, max(2 * kk, kk + 20))
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not (
            kk <= steps <= n):
        raise ValueError(f"steps: expected an int in [{kk}, {n}] (k..in), got {steps!r}")
    dt = model.dtype

    def matvec(v: np.ndarray) -> np.ndarray:
        Jv = lin.jvp(v.astype(dt).reshape(1, -1))
        return lin.vjp(Jv).reshape(-1).astype(np.float64)

    rng = np.random.default_rng(seed)
    nodes, weights, top = [], [], None
    for _ in range(int(starts)):
        vals, w = _lanczos(matvec, n, int(steps), rng)
        nodes.append(vals)
        weights.append(w / int(starts))
        if top is None:
            top = vals
    assert top is not None
    sv = np.sqrt(np.sort(top)[::-1][:kk])
    return JacobianSpectrum(sv, (m_out, n), "lanczos", None,
                            (np.concatenate(nodes), np.concatenate(weights)))


def _exact(J: np.ndarray, k: int | None, at: int | None) -> JacobianSpectrum:
    s = np.linalg.svd(np.asarray(J, dtype=np.float64), compute_uv=False)
    return JacobianSpectrum(s if k is None else s[:k], tuple(J.shape), "exact", at)


def plot_spectra(spectra: Mapping[int, JacobianSpectrum] | Sequence[JacobianSpectrum],
                 ax: Any = None, path: str | os.PathLike[str] | None = None, bins: int = 50,
                 labels: Sequence[str] | None = None, log: bool = False) -> tuple[Any, Any]:
    """Histograms (densities) of the singular values of several spectra on one axes, one
    colour each (needs matplotlib): the "spectrum versus depth" figure. ``labels``
    default to ``at``; ``log=True`` bins on a log scale (down to 1e-6 of the largest
    value; smaller ones are left out). Returns ``(fig, ax)``."""
    p = check_path(path)
    items = list(spectra.items()) if isinstance(spectra, Mapping) else [
        (s.at, s) for s in spectra]
    if not items or not all(isinstance(s, JacobianSpectrum) for _, s in items):
        raise TypeError("spectra: expected JacobianSpectrum values")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an int >= 1, got {bins!r}")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels: expected {len(items)} labels, got {len(labels)}")
    fig, ax = axes(ax, (6.5, 4.0))
    hi = max(float(s.singular_values.max()) for _, s in items)
    if log:
        top = hi * 1.02 if hi > 0 else 1.0
        edges = np.logspace(math.log10(top * 1e-6), math.log10(top), int(bins) + 1)
        ax.set_xscale("log")
    else:
        edges = np.linspace(0.0, hi * 1.02 if hi > 0 else 1.0, int(bins) + 1)
    for i, (at, s) in enumerate(items):
        lab = labels[i] if labels is not None else (f"depth {at}" if at is not None
                                                     else "J")
        v = s.singular_values
        # log bins: the fraction of the values per bin (a density would weigh the narrow
        # bins near 0 up)
        kw = {"weights": np.full(v.size, 1.0 / v.size)} if log else {"density": True}
        ax.hist(v, bins=edges, histtype="step", lw=1.5, label=lab, **kw)
    ax.set_xlabel("singular value of the input-output Jacobian")
    ax.set_ylabel("fraction of the singular values" if log else "density")
    ax.legend(fontsize=8)
    if p is not None:
        from ._plotting import save

        save(fig, p)
    return fig, ax
