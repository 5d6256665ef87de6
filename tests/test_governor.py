"""The thread governor (issue 12, item 1): its policy as a pure state machine on a given
clock (``_core._GovernorSim``), the process-wide governor's Python face
(``gc.thread_policy``, ``gc.set_adaptive_threads``), and bitwise-identical results under
every allowance. No timing is asserted: the measurements are fed by hand."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradchain as gc

P = gc._core._governor_params()
FIRST, MAX, FACTOR = P["probe_first"], P["probe_max"], P["probe_cost_factor"]
BIG = 1 << 20  # a work cap that limits nothing


def sim(setting: int = 2) -> gc._core._GovernorSim:
    return gc._core._GovernorSim(setting)


def feed(g, cpu_fracs, wall=0.01, now=0.0, probe=False):
    """A region of len(cpu_fracs) threads, thread i busy cpu_fracs[i] of its wall."""
    g.learn(len(cpu_fracs), probe, wall, [f * wall for f in cpu_fracs], now)


def test_fresh_state_allows_the_setting():
    g = sim(4)
    assert g.state()["allowance"] == 4
    assert g.threads(BIG, 0.0) == (4, False)


def test_one_starved_region_does_not_drop_threads():
    g = sim(2)
    feed(g, [1.0, 0.4])
    assert g.state()["allowance"] == 2
    assert g.state()["starved_regions"] == 1
    for now in (0.01, 0.02, 0.03):  # hiccups two idle regions apart never confirm
        feed(g, [1.0, 1.0], now=now)
        feed(g, [1.0, 1.0], now=now)
        feed(g, [1.0, 0.3], now=now)
    assert g.state()["allowance"] == 2 and g.state()["drops"] == 0


@pytest.mark.parametrize("pattern", [[True, True], [True, False, True]])
def test_confirmed_contention_drops_to_the_threads_that_kept_their_core(pattern):
    g = sim(2)
    for starved in pattern:
        feed(g, [1.0, 0.5 if starved else 1.0])
    st = g.state()
    assert st["allowance"] == 1 and st["drops"] == 1
    assert st["last_starved"] == 1 and st["last_effective"] == pytest.approx(1.5)
    assert g.threads(BIG, 0.0) == (1, False)


def test_drop_keeps_the_free_cores_of_a_bigger_machine():
    g = sim(16)
    fracs = [1.0] * 12 + [0.5] * 4  # 4 of 16 cores taken by other work
    feed(g, fracs)
    feed(g, fracs)
    assert g.state()["allowance"] == 12


def test_drop_is_at_most_the_effective_cores():
    g = sim(4)
    fracs = [0.8, 0.8, 0.8, 0.2]  # 3 threads not starved, but 2.6 cores' worth of CPU
    feed(g, fracs)
    feed(g, fracs)
    assert g.state()["allowance"] == 2


def test_every_thread_starved_drops_to_one():
    g = sim(4)
    feed(g, [0.3] * 4)
    feed(g, [0.3] * 4)
    assert g.state()["allowance"] == 1


def test_a_thread_that_slept_while_waiting_was_not_starved():
    # an uneven split: thread 1 ran out of work and slept at the barrier (no preemption)
    g = sim(2)
    for _ in range(4):
        g.learn(2, False, 0.01, [0.01, 0.004], 0.0, preempted=[False, False])
    assert g.state()["allowance"] == 2 and g.state()["starved_regions"] == 0
    g.learn(2, False, 0.01, [0.01, 0.004], 0.0, preempted=[False, True])
    g.learn(2, False, 0.01, [0.01, 0.004], 0.0, preempted=[False, True])
    assert g.state()["allowance"] == 1


def test_short_regions_and_single_threads_teach_nothing():
    g = sim(2)
    for _ in range(5):
        feed(g, [1.0, 0.1], wall=P["min_wall"] / 2)
        feed(g, [0.1])
    st = g.state()
    assert st["allowance"] == 2 and st["regions"] == 0


def test_regions_below_the_allowance_teach_nothing():
    g = sim(4)
    for _ in range(3):  # small work ran on 2 of the 4 threads allowed
        feed(g, [1.0, 0.2])
    assert g.state()["allowance"] == 4 and g.state()["regions"] == 0


def dropped(setting=2, now=0.0):
    g = sim(setting)
    feed(g, [1.0] * (setting - 1) + [0.5], now=now)
    feed(g, [1.0] * (setting - 1) + [0.5], now=now)
    assert g.state()["allowance"] == setting - 1
    return g


def test_probes_after_the_interval():
    g = dropped()
    assert g.threads(BIG, FIRST * 0.5) == (1, False)
    assert g.threads(BIG, FIRST) == (2, True)
    assert g.state()["probing"]
    assert g.threads(BIG, FIRST) == (1, False)  # one probe at a time


def test_a_successful_probe_raises_the_allowance():
    g = dropped(setting=4)  # allowance 3
    nt, probe = g.threads(BIG, 1.0)
    assert (nt, probe) == (4, True)
    feed(g, [1.0] * 4, now=1.0, probe=True)
    st = g.state()
    assert st["allowance"] == 4 and st["probe_successes"] == 1 and not st["probing"]
    assert g.threads(BIG, 1.0) == (4, False)


def test_successful_probes_climb_one_thread_at_a_time():
    g = sim(4)
    feed(g, [1.0, 0.5, 0.5, 0.5])
    feed(g, [1.0, 0.5, 0.5, 0.5])
    assert g.state()["allowance"] == 1
    now = 0.0
    for expect in (2, 3, 4):
        now += FIRST
        nt, probe = g.threads(BIG, now)
        assert (nt, probe) == (expect, True)
        feed(g, [1.0] * nt, now=now, probe=True)
        assert g.state()["allowance"] == expect
    assert g.threads(BIG, now + 10) == (4, False)  # at the setting: no more probes


def test_failed_probes_back_off():
    g = dropped()
    now, interval, wall = FIRST, FIRST, 0.001
    for _ in range(12):
        nt, probe = g.threads(BIG, now)
        assert (nt, probe) == (2, True)
        feed(g, [1.0, 0.4], wall=wall, now=now, probe=True)
        interval = min(2 * interval, MAX)
        st = g.state()
        assert st["allowance"] == 1 and st["probe_interval"] == pytest.approx(interval)
        assert st["next_probe"] == pytest.approx(now + max(interval, FACTOR * wall))
        assert g.threads(BIG, st["next_probe"] - 1e-6) == (1, False)
        now = st["next_probe"]
    assert g.state()["probe_interval"] == MAX
    # a slow failed probe waits in proportion to its cost
    nt, probe = g.threads(BIG, now)
    feed(g, [1.0, 0.4], wall=1.0, now=now, probe=True)
    assert g.state()["next_probe"] == pytest.approx(now + max(MAX, FACTOR * 1.0))


def test_a_success_resets_the_back_off():
    g = dropped()
    now = FIRST
    for _ in range(3):
        g.threads(BIG, now)
        feed(g, [1.0, 0.4], now=now, probe=True)
        now = g.state()["next_probe"]
    assert g.state()["probe_interval"] > FIRST
    g.threads(BIG, now)
    feed(g, [1.0, 1.0], now=now, probe=True)
    st = g.state()
    assert st["allowance"] == 2 and st["probe_interval"] == FIRST
    # contention again: dropped, the first probe after probe_first again
    feed(g, [1.0, 0.5], now=now)
    feed(g, [1.0, 0.5], now=now)
    assert g.state()["allowance"] == 1
    assert g.state()["next_probe"] == pytest.approx(now + FIRST)


def test_a_probe_too_short_to_tell_is_released():
    g = dropped()
    assert g.threads(BIG, FIRST) == (2, True)
    feed(g, [1.0, 0.1], wall=P["min_wall"] / 10, now=FIRST, probe=True)
    st = g.state()
    assert not st["probing"] and st["allowance"] == 1 and st["probes"] == 0
    assert g.threads(BIG, FIRST) == (2, True)  # the next pass probes again


def test_the_work_cap_and_the_setting_bound_every_pass():
    g = sim(4)
    assert g.threads(1, 0.0) == (1, False)
    assert g.threads(3, 0.0) == (3, False)
    assert g.threads(BIG, 0.0) == (4, False)
    g = dropped(setting=4)  # allowance 3
    assert g.threads(2, 10.0) == (2, False)  # no probe where the work cannot feed one more
    assert g.threads(3, 10.0) == (3, False)
    assert not g.state()["probing"]
    assert g.threads(4, 10.0) == (4, True)
    g = sim(1)
    assert g.threads(BIG, 10.0) == (1, False)


# --- the process-wide governor --------------------------------------------------


@pytest.fixture
def governed(restore_threads):
    # what earlier tests taught the governor (on a busy machine: a lowered allowance, which a
    # new setting keeps) is not this test's
    gc._core._governor_force_bail(0)
    gc._core._governor_reset()
    yield
    gc._core._governor_force_bail(0)
    gc.set_adaptive_threads(True)
    gc._core._governor_reset()


def test_thread_policy_reports_the_setting_and_the_allowance(governed):
    gc.set_num_threads(2)
    pol = gc.thread_policy()
    assert isinstance(pol, gc.runtime.ThreadPolicy)
    assert pol.threads == 2 and pol.allowance == 2 and pol.adaptive and not pol.adapting
    assert pol.next_probe_s is None
    gc._core._governor_force(1, 1000.0, hold=True)
    pol = gc.thread_policy()
    assert pol.allowance == 1 and pol.adapting and 900 < pol.next_probe_s <= 1000
    gc.set_num_threads(2)  # a new setting starts afresh
    assert gc.thread_policy().allowance == 2 and not gc.thread_policy().adapting


def test_a_new_setting_keeps_what_the_governor_learnt(governed):
    # a busy machine stays busy when the count changes (the benchmark's thread sweep sets
    # it before every row): a lowered allowance survives, an unlowered one follows
    gc._core._governor_reset()
    gc.set_num_threads(4)
    assert gc.thread_policy().allowance == 4
    gc.set_num_threads(2)
    assert gc.thread_policy().allowance == 2 and not gc.thread_policy().adapting
    gc.set_num_threads(4)
    assert gc.thread_policy().allowance == 4
    gc._core._governor_force(1, 1000.0, hold=False)  # as if contention had been confirmed
    for n in (1, 4, 2, 2, 4):
        gc.set_num_threads(n)
        pol = gc.thread_policy()
        assert pol.allowance == 1 and pol.adapting == (n > 1), n
        assert n == 1 or 900 < pol.next_probe_s <= 1000  # the probe schedule is kept
    gc._core._governor_force(3, 1000.0, hold=False)
    gc.set_num_threads(2)  # below a lowered allowance: the setting caps it
    assert gc.thread_policy().allowance == 2 and not gc.thread_policy().adapting


def test_set_adaptive_threads(governed):
    gc.set_num_threads(2)
    gc._core._governor_force(1, 1000.0, hold=True)
    gc.set_adaptive_threads(False)
    pol = gc.thread_policy()
    assert not pol.adaptive and not pol.adapting and pol.allowance == 2
    m = gc.MLP([64, 64, 4], seed=0)
    x = np.ones((256, 64), np.float32)
    y = m.forward(x)
    gc.set_adaptive_threads(True)  # starts afresh
    pol = gc.thread_policy()
    assert pol.adaptive and pol.allowance == 2
    assert np.array_equal(y, m.forward(x))
    with pytest.raises(TypeError, match="on: expected a bool"):
        gc.set_adaptive_threads(1)


def _passes():
    rng = np.random.default_rng(0)
    out = []
    m = gc.MLP([96] * 5 + [10], activation="tanh", norm="layer", residual=True, seed=1)
    x = rng.standard_normal((160, 96)).astype(np.float32)
    y = m.forward(x)
    rep = m.backward(np.ones_like(y))
    out += [y, m.input_grad, *[g.copy() for g in m.grads()], rep.activation_grad_norms,
            rep.weight_grad_norms]
    r = gc.RNN(24, 128, output_size=5, seed=2)
    xs = rng.standard_normal((30, 40, 24)).astype(np.float32)
    hs = r.forward(xs)
    rrep = r.backward(np.ones_like(hs), np.ones((30, 40, 5), np.float32))
    out += [hs, r.outputs, r.input_grad, *[g.copy() for g in r.grads()],
            rrep.timestep_grad_norms]
    gn = gc.clip_grad_norm(m, 0.5)
    out += [np.array([gn]), *[g.copy() for g in m.grads()]]
    return [np.asarray(a).copy() for a in out]


@pytest.mark.parametrize("setting", [2, 4])
def test_results_are_bitwise_identical_under_every_allowance(governed, setting):
    gc.set_num_threads(1)
    want = _passes()
    gc.set_num_threads(setting)
    for allowance in range(1, setting + 1):
        gc._core._governor_force(allowance, 1000.0, hold=True)
        assert gc.thread_policy().allowance == allowance
        got = _passes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(want, got, strict=True)), allowance
    gc._core._governor_reset()  # adaptive, probes due at once: whatever the governor picks
    gc._core._governor_force(1, 0.0)
    for _ in range(3):
        got = _passes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(want, got, strict=True))


def _mlp_passes(**kw):
    rng = np.random.default_rng(3)
    m = gc.MLP([80] * 7 + [6], seed=4, **kw)
    x = rng.standard_normal((200, 80)).astype(np.float32)
    y = m.forward(x)
    rep = m.backward(rng.standard_normal(y.shape).astype(np.float32))
    out = [y, m.input_grad, *[g.copy() for g in m.grads()], rep.activation_grad_norms,
           rep.weight_grad_norms, rep.bias_grad_norms, *[b.copy() for _, b in m.named_buffers()]]
    return [np.asarray(a).copy() for a in out]


@pytest.mark.parametrize("kw", [dict(activation="tanh"),
                                dict(activation="relu", norm="batch", residual=True),
                                dict(activation="gelu", norm="layer", residual=2)])
def test_a_bail_out_at_any_layer_gives_the_same_numbers(governed, kw):
    # a starved MLP region leaves at a layer boundary and the pass finishes on one thread
    gc.set_num_threads(1)
    want = _mlp_passes(**kw)
    gc.set_num_threads(2)
    for k in range(1, 12):  # 7 hidden layers + output: forward 8 steps, backward 9
        gc._core._governor_reset()
        gc._core._governor_force_bail(k)
        got = _mlp_passes(**kw)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(want, got, strict=True)), k
        if k == 1:  # both passes bailed at their first boundary: a forced bail teaches nothing
            assert gc._core._governor_state()["regions"] == 0


FORK_SCRIPT = """
import os, pickle, sys
import numpy as np
import gradchain as gc

def passes():
    rng = np.random.default_rng(0)
    m = gc.MLP([96] * 5 + [10], activation="tanh", seed=1)
    x = rng.standard_normal((160, 96)).astype(np.float32)
    y = m.forward(x)
    m.backward(np.ones_like(y))
    return [y, m.input_grad, *[g.copy() for g in m.grads()]]

gc.set_num_threads(2)
parent = passes()                          # threads started in the parent
gc._core._governor_force(1, 0.0)           # adapting, a probe due: the state a fork copies
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        pol = gc.thread_policy()           # the child's governor answers (its lock is fresh)
        child = passes()
        pol2 = gc.thread_policy()
        os.write(w, pickle.dumps((pol, pol2, child)))
        code = 0
    finally:
        os._exit(code)
os.close(w)
data = b""
while chunk := os.read(r, 1 << 20):
    data += chunk
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
pol, pol2, child = pickle.loads(data)
assert pol.threads == 1 and pol.allowance == 1 and not pol.adapting, pol  # single-threaded child
assert pol.regions == 0 and pol.drops == 0, pol                          # a fresh governor
assert pol2.regions == 0, pol2
assert all(a.tobytes() == b.tobytes() for a, b in zip(parent, child, strict=True))
assert all(a.tobytes() == b.tobytes() for a, b in zip(parent, passes(), strict=True))
print("OK")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_from_a_fresh_governor():
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    p = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
