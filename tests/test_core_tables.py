"""The C++ core's tables (cpp/include/gradchain/activation_list.h, norm_list.h), as the
extension exports them, agree with the Python ones: the same activation names, the same
kink rule ("selects") and parameter counts, and the norm kinds the models take."""

from __future__ import annotations

import gradchain as gc
from gradchain import _core
from gradchain.activations import SPECS


def test_activation_ids_cover_the_python_table() -> None:
    ids = _core.ACTIVATION_IDS
    assert set(SPECS) <= set(ids)
    # one id per row, in list order, and the custom slot after the last row
    rows = [n for n in ids if n != "custom"]
    assert [ids[n] for n in rows] == list(range(len(rows)))
    assert ids["custom"] == len(rows)


def test_activation_rows_agree_with_the_python_rows() -> None:
    rows = set(_core.ACTIVATION_IDS) - {"custom"}
    assert set(_core.ACTIVATION_SELECTS) == rows
    assert set(_core.ACTIVATION_NUM_PARAMS) == rows
    for name, spec in SPECS.items():
        assert _core.ACTIVATION_SELECTS[name] is spec.selects, name
        assert _core.ACTIVATION_NUM_PARAMS[name] == len(spec.params), name
    assert {n for n, s in _core.ACTIVATION_SELECTS.items() if s} == {"relu", "hardtanh"}


def test_norm_ids() -> None:
    assert _core.NORM_IDS == {"none": 0, "batch": 1, "layer": 2}


def test_every_norm_id_is_a_norm_the_models_take() -> None:
    for name in _core.NORM_IDS:
        m = gc.MLP([3, 4, 4, 2], norm=name, seed=0)
        assert m.norm == (None if name == "none" else name)
        assert any(n.startswith("norms.") for n, _ in m.named_parameters()) == (name != "none")
