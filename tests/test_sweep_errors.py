"""gc.sweep's own errors (issue 10, items 7, 9, 12): sizes too large to count, a script
without the ``if __name__ == "__main__":`` guard, and what ``data="digits"`` implies."""

from __future__ import annotations

import pytest

from gradchain import sweeps


def test_a_huge_depth_is_a_memory_error_with_a_message():
    with pytest.raises(MemoryError, match=r"weights cannot be allocated \(width=128, "
                                          r"depth=1000000000"):
        sweeps.configurations({}, depth=10**9)
