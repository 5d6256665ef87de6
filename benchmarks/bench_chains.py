#!/usr/bin/env python
"""The gradchain benchmark suite: the standard workloads (docs/WORKLOADS.md) against PyTorch,
JAX and NumPy, side by side in one run. Same flags as ``gradchain bench``; see
benchmarks/README.md.

    python benchmarks/bench_chains.py --json benchmarks/results-mlp.json
    python benchmarks/bench_chains.py --quick            # a smoke run
"""

from __future__ import annotations

import sys

from gradchain.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
