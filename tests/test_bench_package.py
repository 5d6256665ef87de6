"""The benchmark harness is a subpackage split along its tables; every name the single
module had is still importable from ``gradchain.bench``, and it runs as a module."""

from __future__ import annotations

import subprocess
import sys

from gradchain import bench

# the public names of gradchain/bench.py before the split (its __all__ and the rest)
BEFORE = (
    "BUILDERS", "CASE_MAKERS", "PEERS", "QUICK", "REFERENCES", "WORKLOADS", "Agreement", "Case",
    "CpuMeter", "MLPWorkload", "Outputs", "PeerInfo", "PeerInstance", "RNNWorkload", "arbitrate",
    "check_agreement", "format_table", "gemm_ceiling", "kink_explained", "machine_info", "main",
    "measure_memory", "run", "wait_idle", "Workload", "Builder", "KINKED_ACTIVATIONS",
    "KINK_RANK", "KINK_MAX_ERR", "NOISY_CORES", "agreement_errors", "tolerance_for",
)


def test_every_name_of_the_single_module_is_still_there() -> None:
    missing = [n for n in BEFORE if not hasattr(bench, n)]
    assert not missing
    assert set(bench.__all__) <= set(dir(bench))


def test_one_module_per_table() -> None:
    from gradchain.bench import agreement, cases, cli, machine, memory, peers, report, timing
    from gradchain.bench import workloads as wl

    assert hasattr(bench, "__path__"), "gradchain.bench should be a package"
    # the re-exports are the tables themselves (registering a peer or workload in one is
    # seen by the run loop)
    assert bench.WORKLOADS is wl.WORKLOADS and bench.QUICK is wl.QUICK
    assert bench.CASE_MAKERS is cases.CASE_MAKERS and bench.REFERENCES is cases.REFERENCES
    assert bench.PEERS is peers.PEERS and bench.BUILDERS is peers.BUILDERS
    assert timing.PEERS is peers.PEERS and timing.BUILDERS is peers.BUILDERS
    assert bench.arbitrate is agreement.arbitrate and bench.machine_info is machine.machine_info
    assert bench.run is timing.run and bench.measure_memory is memory.measure_memory
    assert bench.format_table is report.format_table and bench.main is cli.main
    # one module per peer, each with its MLP and RNN classes in BUILDERS
    from gradchain.bench.peers import gradchain_peer, jax_peer, numpy_peer, torch_peer

    for kind in ("mlp", "rnn"):
        b = peers.BUILDERS[kind]
        assert b["gradchain"] is gradchain_peer._Gradchain
        assert b["jax"] in (jax_peer._JaxMLP, jax_peer._JaxRNN)
        assert b["numpy"] in (numpy_peer._NumpyMLP, numpy_peer._NumpyRNN)
    assert torch_peer._TorchMLP.__module__ == "gradchain.bench.peers.torch_peer"


def test_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "gradchain.bench", "--list"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    for name in (*bench.WORKLOADS, *bench.PEERS):
        assert name in out.stdout
    assert "Warning" not in out.stderr  # runpy: no module found twice
