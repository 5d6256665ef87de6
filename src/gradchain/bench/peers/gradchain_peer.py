"""The gradchain peer: ``gc.MLP`` / ``gc.RNN`` themselves (the reference of the checks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cases import REPORT_OUTPUTS, Case, Outputs, for_kind, gc_model


class _Gradchain:
    """``gc.MLP`` / ``gc.RNN``: ``forward(x)`` + ``backward(dL/dy or dL/dh_t)``, the
    report coming with backward; ``report=False`` is the gradients-only baseline (the
    report's own passes skipped) that prices the report; ``panel=False`` sends every
    product the panel GEMM would take to OpenBLAS (the RNN's per-step products excepted),
    which prices gradchain's own GEMM."""

    def __init__(self, case: Case, report: bool = True, panel: bool = True) -> None:
        import gradchain as gc

        w = case.workload
        gc.set_num_threads(case.threads)
        self.to_outputs = for_kind(REPORT_OUTPUTS, w.kind, "gradchain report conversion")
        self.model = gc_model(w, seed=0)
        self.model.load_state_dict(case.state)
        self.x, self.g = case.x, case.grad_y
        self.report = report
        self.panel = panel
        self._y: np.ndarray | None = None
        self._rep: Any = None

    def step(self) -> None:
        from gradchain import _core

        was = _core._panel_gemm()
        _core._set_panel_gemm(self.panel)
        try:
            self._y = self.model.forward(self.x)
            self._rep = self.model.backward(self.g, report=self.report)
        finally:
            _core._set_panel_gemm(was)

    def outputs(self) -> Outputs:
        assert self._y is not None
        y = np.array(self._y)
        grads = {k: np.array(g) for k, g in self.model.named_grads()}
        r = self._rep
        if not self.report:
            return Outputs(y=y, grads=grads)
        return self.to_outputs(y, grads, r)


def get_threads() -> int:
    """gradchain's thread setting (``gc.get_num_threads``): the thread sweep's control."""
    import gradchain as gc

    return int(gc.get_num_threads())


def set_threads(n: int) -> None:
    """``gc.set_num_threads(n)``. The sweep's default row calls it with the setting the run
    found (the library's default from the command line); were the runtime to gain a
    default that is not a fixed count, this is where the harness would select it."""
    import gradchain as gc

    if gc.get_num_threads() != n:
        gc.set_num_threads(n)
