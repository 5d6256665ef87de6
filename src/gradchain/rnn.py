"""``gradchain.rnn``: where :class:`RNN` lived before the models package; the class is
``gradchain.models.RNN`` (``gradchain/models/rnn.py``) and this name keeps working
(imports, and pickles that name ``gradchain.rnn.RNN``)."""

from __future__ import annotations

from .models.rnn import RNN

__all__ = ["RNN"]


def __dir__() -> list[str]:  # the public names, not the imports
    return sorted(__all__)
