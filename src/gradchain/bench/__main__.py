"""``python -m gradchain.bench``: the benchmark's command line (:func:`gradchain.bench.main`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
