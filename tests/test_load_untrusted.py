"""gc.load of untrusted files (issue 10, items 6 and 8).

Every malformed file - forged configs (huge sizes, a million layers, deep nesting, wrong
types, negative numbers, NaN), array headers that disagree with the config, zip bombs,
encrypted / pickled / duplicated members, truncated and bit-flipped files - is a
ValueError naming the file, raised before anything the file claims is allocated
(checked in a subprocess: peak RSS and an address-space limit). Loading is linear
in the number of tensors (operation counts, not timings).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain as gc
import gradchain.io as gio

META = "__gradchain_config__"


# --------------------------------------------------------------------------- helpers
def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a, allow_pickle=True)
    return b.getvalue()


def write_npz(path, cfg, arrays, *, raw_config: bytes | None = None,
              compression=zipfile.ZIP_STORED) -> None:
    """An .npz as np.savez writes it, from a config (dict, or raw JSON bytes) and arrays
    (ndarrays or raw member bytes)."""
    text = raw_config if raw_config is not None else json.dumps(cfg).encode()
    members = {META: _npy(np.frombuffer(text, dtype=np.uint8))}
    for k, v in arrays.items():
        members[k] = v if isinstance(v, bytes) else _npy(np.asarray(v))
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for k, data in members.items():
            z.writestr(k + ".npy", data)


def small_model(kind="MLP", dtype=np.float32):
    if kind == "MLP":
        m = gc.MLP([4, 6, 6, 3], norm="batch", residual=True, dtype=dtype, seed=1)
        m.forward(np.random.default_rng(0).normal(size=(5, 4)).astype(dtype))
        return m
    return gc.RNN(3, 5, output_size=2, dtype=dtype, seed=1)


def parts(m):
    cfg = {**m.config(), "format": 1}
    return cfg, {k: np.array(v) for k, v in m.state_dict().items()}


def rejects(path, *fragments: str) -> ValueError:
    with pytest.raises(ValueError) as e:
        gc.load(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), f"the message does not name the file: {msg}"
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    assert "allow_pickle" not in msg, msg
    return e.value


def same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].tobytes() == sb[k].tobytes(), k
    assert a.config() == b.config()


def patch_member(data: bytes, name: str, *, flag_or: int = 0,
                 file_size: int | None = None) -> bytes:
    """Rewrite a member's general-purpose flags / uncompressed size in both its local
    header and its central-directory entry (what a forger does with a hex editor)."""
    b = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
        cd = z.start_dir
    loc = info.header_offset
    assert b[loc:loc + 4] == b"PK\x03\x04"
    # central directory: find this member's entry
    pos = cd
    while b[pos:pos + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack("<HHH", b[pos + 28:pos + 34])
        if bytes(b[pos + 46:pos + 46 + n]).decode() == name:
            break
        pos += 46 + n + e + c
    else:
        raise AssertionError(name)
    if flag_or:
        for off in (loc + 6, pos + 8):
            (v,) = struct.unpack("<H", b[off:off + 2])
            b[off:off + 2] = struct.pack("<H", v | flag_or)
    if file_size is not None:
        b[loc + 22:loc + 26] = struct.pack("<I", file_size)
        b[pos + 24:pos + 28] = struct.pack("<I", file_size)
    return bytes(b)


# --------------------------------------------------------------------------- forged configs
def _mlp_cfg():
    return parts(small_model())


FORGED = {
    # name: (mutate(cfg) -> cfg, message fragment)
    "huge-sizes": (lambda c: {**c, "sizes": [4, 10**9, 10**9, 3]}, "expected shape"),
    "huge-width-int": (lambda c: {**c, "sizes": [4, 10**30, 6, 3]}, "sizes[1]"),
    "negative-size": (lambda c: {**c, "sizes": [4, -6, 6, 3]}, "sizes[1]"),
    "zero-size": (lambda c: {**c, "sizes": [4, 0, 6, 3]}, "sizes[1]"),
    "float-size": (lambda c: {**c, "sizes": [4, 6.5, 6, 3]}, "sizes[1] must be an int"),
    "bool-size": (lambda c: {**c, "sizes": [4, True, 6, 3]}, "sizes[1] must be an int"),
    "sizes-string": (lambda c: {**c, "sizes": "4,6,6,3"}, "sizes must be a list"),
    "sizes-short": (lambda c: {**c, "sizes": [4]}, "sizes must be a list"),
    "residual-length": (lambda c: {**c, "residual": [True]}, "residual"),
    "residual-type": (lambda c: {**c, "residual": [1, 0]}, "residual[0]"),
    "bias-string": (lambda c: {**c, "bias": "yes"}, "bias"),
    "dtype-f16": (lambda c: {**c, "dtype": "float16"}, "dtype"),
    "dtype-int": (lambda c: {**c, "dtype": 5}, "dtype"),
    "norm-group": (lambda c: {**c, "norm": "group"}, "norm"),
    "activation-int": (lambda c: {**c, "activation": 5}, "activation"),
    "activation-unknown": (lambda c: {**c, "activation": {"name": "swoosh"}}, "swoosh"),
    "activation-param": (lambda c: {**c, "activation": {"name": "tanh", "k": 1}}, "tanh"),
    "activation-param-str": (lambda c: {**c, "activation": {"name": "elu", "alpha": "x"}},
                             "activation.alpha"),
    "init-unknown": (lambda c: {**c, "init": {"name": "nope"}}, "init"),
    "init-gain-str": (lambda c: {**c, "init": {"name": "orthogonal", "gain": "x"}},
                      "init.gain"),
    "init-extra-key": (lambda c: {**c, "init": {"name": "orthogonal", "gain": 1, "z": 1}},
                       "'z'"),
    "init-negative": (lambda c: {**c, "init": {"name": "normal", "gain": None,
                                               "sigma_w": -1, "sigma_b": 0}}, "sigma_w"),
    "kind": (lambda c: {**c, "kind": "CNN"}, "kind"),
    "format": (lambda c: {**c, "format": 2}, "format"),
    "no-format": (lambda c: {k: v for k, v in c.items() if k != "format"}, "format"),
    "eps-negative": (lambda c: {**c, "eps": -1e-5}, "eps"),
    "momentum-2": (lambda c: {**c, "momentum": 2}, "momentum"),
    "training-str": (lambda c: {**c, "training": "yes"}, "training"),
    "unknown-key": (lambda c: {**c, "extra": 1}, "unknown keys ['extra']"),
    "missing-key": (lambda c: {k: v for k, v in c.items() if k != "eps"}, "missing keys"),
    "eps-nan": (lambda c: {**c, "eps": float("nan")}, "NaN"),
    "scale-inf": (lambda c: {**c, "residual_scale": float("inf")}, "Infinity"),
    "long-string": (lambda c: {**c, "activation": {"name": "x" * 10_000}}, "characters"),
    "config-list": (lambda c: [c], "JSON object"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_mlp_config(tmp_path, case):
    cfg, arrays = _mlp_cfg()
    mutate, fragment = FORGED[case]
    path = tmp_path / f"{case}.npz"
    write_npz(path, mutate(cfg), arrays)
    rejects(path, fragment)


FORGED_RNN = {
    "hidden-huge": (lambda c: {**c, "hidden_size": 10**7}, "expected shape"),
    "hidden-over-cap": (lambda c: {**c, "hidden_size": 10**9}, "hidden_size"),
    "output-zero": (lambda c: {**c, "output_size": 0}, "output_size"),
    "input-float": (lambda c: {**c, "input_size": 3.0}, "input_size"),
    "batch-first-int": (lambda c: {**c, "batch_first": 1}, "batch_first"),
    "input-init": (lambda c: {**c, "input_init": None}, "input_init"),
    "mlp-key": (lambda c: {**c, "sizes": [3, 5]}, "unknown keys"),
}


@pytest.mark.parametrize("case", list(FORGED_RNN))
def test_forged_rnn_config(tmp_path, case):
    cfg, arrays = parts(small_model("RNN"))
    mutate, fragment = FORGED_RNN[case]
    path = tmp_path / f"{case}.npz"
    write_npz(path, mutate(cfg), arrays)
    rejects(path, fragment)


def test_a_million_layers_is_refused_before_parsing(tmp_path):
    cfg, arrays = _mlp_cfg()
    n = 10**6
    path = tmp_path / "million.npz"
    write_npz(path, {**cfg, "sizes": [4] + [6] * n + [3], "residual": [False] * n}, arrays)
    rejects(path, "too large for an archive of")
    # a smaller lie (fits the config limit) is caught by the member count instead
    n = 2000
    write_npz(path, {**cfg, "sizes": [4] + [6] * n + [3], "residual": [False] * n}, arrays)
    rejects(path, "describes 2001 layers", "holds 16 arrays")


def test_deep_nesting_and_raw_json_tricks(tmp_path):
    cfg, arrays = _mlp_cfg()
    good = json.dumps(cfg)
    deep = "[" * 30_000 + "]" * 30_000  # json.loads: RecursionError
    cases = {
        "deep": (good[:-1] + f', "x": {deep}}}', "nests 30001 levels"),
        "deeper": (good[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "too large"),
        "deep-unbalanced": (good[:-1] + ', "x": ' + "{" * 30_000, "nests"),
        "nested-4": (good[:-1] + ', "x": [[[[1]]]]}', "nests 5 levels"),
        "nan": (good.replace('"eps": 1e-05', '"eps": NaN'), "NaN"),
        "inf-literal": (good.replace('"eps": 1e-05', '"eps": 1e999'), "eps must be finite"),
        "dup-key": (good[:-1] + ', "eps": 0.5}', "repeats a key"),
        "huge-int": (good.replace('"sizes": [4', '"sizes": [' + "9" * 5000), "JSON"),
        "not-json": ("{sizes: 4}", "not valid JSON"),
        "empty": ("", "not valid JSON"),
    }
    for name, (text, fragment) in cases.items():
        path = tmp_path / f"{name}.npz"
        write_npz(path, None, arrays, raw_config=text.encode())
        rejects(path, fragment)
    path = tmp_path / "latin1.npz"
    write_npz(path, None, arrays, raw_config=good.encode()[:-1] + b', "\xff": 1}')
    rejects(path, "UTF-8")


def test_config_entry_of_the_wrong_kind(tmp_path):
    cfg, arrays = _mlp_cfg()
    path = tmp_path / "f.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(META + ".npy", _npy(np.zeros(10)))  # float64, not bytes
        for k, v in arrays.items():
            z.writestr(k + ".npy", _npy(v))
    rejects(path, "uint8")
    with zipfile.ZipFile(path, "w") as z:
        for k, v in arrays.items():
            z.writestr(k + ".npy", _npy(v))
    rejects(path, "no config entry")


# --------------------------------------------------------------------------- array headers
def test_array_headers_must_match_the_config(tmp_path):
    cfg, arrays = _mlp_cfg()
    cases = {
        "transposed": ({"layers.0.weight": arrays["layers.0.weight"].T.copy()},
                       "'layers.0.weight': expected shape (6, 4) (from the config), got (4, 6)"),
        "shape": ({"layers.0.weight": np.zeros((6, 5), np.float32)}, "expected shape (6, 4)"),
        "f16": ({"layers.0.bias": arrays["layers.0.bias"].astype(np.float16)}, "float16"),
        "f64": ({"layers.0.bias": arrays["layers.0.bias"].astype(np.float64)}, "float64"),
        "int-weight": ({"layers.0.weight": np.zeros((6, 4), np.int32)}, "int32"),
        "float-counter": ({"norms.0.num_batches_tracked": np.array(1.0)}, "integer counter"),
        "counter-shape": ({"norms.0.num_batches_tracked": np.array([1, 2])}, "expected shape ()"),
        "structured": ({"layers.0.bias": np.zeros(6, dtype=[("a", "<f4")])}, "layers.0.bias"),
        "object": ({"layers.0.bias": np.array([None] * 6, dtype=object)}, "pickled"),
        "negative-counter": ({"norms.0.num_batches_tracked": np.array(-1)}, "out of range"),
        "not-npy": ({"layers.0.bias": b"hello world, not an array"}, "not a .npy array"),
        "trailing": ({"layers.0.bias": _npy(arrays["layers.0.bias"]) + b"xx"}, "the archive says"),
        "short": ({"layers.0.bias": _npy(arrays["layers.0.bias"])[:-4]}, "the archive says"),
        "version-3": ({"layers.0.bias": b"\x93NUMPY\x03\x00" + b"\0" * 40}, "version 3"),
        "big-header": ({"layers.0.bias": b"\x93NUMPY\x02\x00" + struct.pack("<I", 10**9)},
                       "header of 1000000000 bytes"),
        "bad-header": ({"layers.0.bias": b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n"},
                       "bad .npy header"),
    }
    for name, (change, fragment) in cases.items():
        path = tmp_path / f"{name}.npz"
        write_npz(path, cfg, {**arrays, **change})
        rejects(path, fragment)
    path = tmp_path / "extra.npz"
    write_npz(path, cfg, {**arrays, "layers.9.weight": np.zeros(3, np.float32)})
    rejects(path, "unexpected ['layers.9.weight']")


def test_pickled_member_is_refused_with_our_own_message(tmp_path):
    cfg, arrays = _mlp_cfg()
    path = tmp_path / "p.npz"
    write_npz(path, cfg, {**arrays, "layers.0.weight": np.array([{"x": 1}], dtype=object)})
    e = rejects(path, "'layers.0.weight'", "Python objects", "never unpickles")
    assert "allow_pickle" not in str(e)


def test_other_layouts_of_the_same_numbers_load(tmp_path):
    """Not everything unusual is forged: Fortran order, big-endian, deflated members."""
    m = small_model(dtype=np.float64)
    cfg, arrays = parts(m)
    variants = {
        "fortran": {k: np.asfortranarray(v) if v.ndim else v for k, v in arrays.items()},
        "big-endian": {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()},
    }
    for name, arrs in variants.items():
        path = tmp_path / f"{name}.npz"
        write_npz(path, cfg, arrs)
        same_model(m, gc.load(path))
    path = tmp_path / "deflated.npz"
    write_npz(path, cfg, arrays, compression=zipfile.ZIP_DEFLATED)
    same_model(m, gc.load(path))
    r = small_model("RNN")
    np.savez_compressed(path, **{META: np.frombuffer(json.dumps(
        {**r.config(), "format": 1}).encode(), np.uint8)}, **parts(r)[1])
    same_model(r, gc.load(path))


# --------------------------------------------------------------------------- the archive
def test_archive_level_forgeries(tmp_path):
    m = small_model()
    good = tmp_path / "good.npz"
    gc.save(m, good)
    data = good.read_bytes()
    # an encrypted member (zipfile would say "password required", a RuntimeError)
    path = tmp_path / "encrypted.npz"
    path.write_bytes(patch_member(data, "layers.0.bias.npy", flag_or=0x1))
    rejects(path, "'layers.0.bias.npy' is encrypted")
    # a member claiming more bytes than the file has
    path = tmp_path / "claims.npz"
    path.write_bytes(patch_member(data, "layers.0.bias.npy", file_size=10**9))
    rejects(path)
    # duplicated member names
    cfg, arrays = parts(m)
    path = tmp_path / "dup.npz"
    write_npz(path, cfg, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("layers.0.bias.npy", _npy(np.zeros(6, np.float32)))
    rejects(path, "appears twice")
    # an unsupported compression method
    path = tmp_path / "bz2.npz"
    write_npz(path, cfg, arrays, compression=zipfile.ZIP_BZIP2)
    rejects(path, "compression method 12")
    # not an .npz at all / a plain .npy
    for name, content in (("junk.npz", b"hello"), ("empty.npz", b"")):
        (tmp_path / name).write_bytes(content)
        rejects(tmp_path / name, "cannot read gradchain model file")
    np.save(tmp_path / "a.npy", np.zeros(3))
    rejects(tmp_path / "a.npy", "not a gradchain model file")


def test_truncated_files(tmp_path):
    gc.save(small_model(), tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    for n in sorted({0, 1, 4, 30, 100, len(data) // 3, len(data) // 2, len(data) - 22,
                     len(data) - 1}):
        (tmp_path / "t.npz").write_bytes(data[:n])
        rejects(tmp_path / "t.npz", "cannot read gradchain model file")


def test_load_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "m.npz"
    os.mkfifo(fifo)
    out: list[BaseException] = []
    t = threading.Thread(target=lambda: out.append(pytest.raises(ValueError, gc.load, fifo)
                                                   .value), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "gc.load blocked opening a FIFO"
    assert str(fifo) in str(out[0]) and "FIFO" in str(out[0])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = small_model()
    path = tmp_path_factory.mktemp("saved") / "m.npz"
    gc.save(m, path)
    return path.read_bytes(), m


@settings(max_examples=60)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                      max_size=3))
def test_bit_flips_raise_value_error_or_load_the_same_model(tmp_path_factory, saved, flips):
    data, m = saved
    b = bytearray(data)
    for pos, x in flips:
        b[pos % len(b)] ^= x
    path = tmp_path_factory.mktemp("flip") / "m.npz"
    path.write_bytes(bytes(b))
    try:
        m2 = gc.load(path)
    except ValueError as e:
        assert str(e).startswith(str(path)) and "allow_pickle" not in str(e)
        return
    same_model(m, m2)


# --------------------------------------------------------------------------- bounded memory
def _bombs(tmp_path) -> dict[str, str]:
    """Zip bombs, each a few hundred KB at most on disk."""
    out = {}
    cfg, arrays = _mlp_cfg()
    big = 64 << 20  # 64 MiB of zeros inflate from ~64 KiB

    def deflated_member(z, name, head: bytes, zeros: int):
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = len(head) + zeros
        with z.open(info, "w") as w:
            w.write(head)
            chunk = bytes(1 << 20)
            for _ in range(zeros >> 20):
                w.write(chunk)

    def archive(path, members_head, bomb_key, head, zeros):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(META + ".npy", _npy(np.frombuffer(json.dumps(cfg_).encode(),
                                                         np.uint8)))
            for k, v in members_head.items():
                if k == bomb_key:
                    deflated_member(z, k + ".npy", head, zeros)
                else:
                    z.writestr(k + ".npy", _npy(v))

    # 1. an honest bomb: the config describes a 64 MiB weight of zeros, deflated
    n = int((big // 4) ** 0.5)
    cfg_ = {**cfg, "sizes": [n, n], "residual": [], "norm": None}
    arrs = {"layers.0.weight": None, "layers.0.bias": np.zeros(n, np.float32)}
    head = _npy(np.zeros((n, n), np.float32))[:128]  # just the header
    p = tmp_path / "honest.npz"
    archive(p, arrs, "layers.0.weight", head, n * n * 4)
    out["honest"] = str(p)
    # 2. a small array's member that inflates to 64 MiB (declared honestly)
    cfg_ = cfg
    head = _npy(arrays["layers.0.bias"])
    p = tmp_path / "long-member.npz"
    archive(p, arrays, "layers.0.bias", head, big)
    out["long-member"] = str(p)
    # 3. the same, its sizes patched down to the array's: the stream inflates further
    p2 = tmp_path / "lying.npz"
    p2.write_bytes(patch_member(p.read_bytes(), "layers.0.bias.npy", file_size=len(head)))
    out["lying"] = str(p2)
    # 4. a 1.7 KB forged config (the issue's): huge sizes, a few real small arrays
    p = tmp_path / "forged.npz"
    write_npz(p, {**cfg, "sizes": [4, 40000, 40000, 3]}, arrays)
    out["forged"] = str(p)
    return out


CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import gradchain as gc

    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def vsize():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()

    gc.load(sys.argv[1])                    # warm up every code path on a good file
    base = rss()
    limit = vsize() + (256 << 20)           # a real address-space limit: +256 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for name, path in json.loads(sys.argv[2]).items():
        try:
            gc.load(path)
            out[name] = ["loaded", ""]
        except BaseException as e:
            out[name] = [type(e).__name__, str(e)[:300]]
    out["peak_increase"] = rss() - base
    print(json.dumps(out))
""")


def test_zip_bombs_and_forged_configs_cost_little_memory(tmp_path):
    good = tmp_path / "good.npz"
    gc.save(small_model(), good)
    bombs = _bombs(tmp_path)
    for p in bombs.values():
        assert os.path.getsize(p) < 512 << 10, p
    r = subprocess.run([sys.executable, "-c", CHILD, str(good), json.dumps(bombs)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name in bombs:
        kind, msg = out[name]
        assert kind == "ValueError", f"{name}: {kind}: {msg}"
        assert msg.startswith(bombs[name]), msg
    assert "zip bomb" in out["honest"][1]
    assert out["peak_increase"] < 50 << 20, (
        f"loading the bombs raised the peak RSS by {out['peak_increase'] >> 20} MiB")


# --------------------------------------------------------------------------- linear work
def test_load_work_is_linear_in_the_number_of_tensors(tmp_path, monkeypatch):
    """Each member is opened at most twice (header, then data) and each header parsed
    once; load_state_dict compares each key a bounded number of times (it used a list
    lookup: quadratic in the number of layers)."""
    opens = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, *a, **k: opens.append(1) or real_open(self, *a, **k))
    for n in (50, 200):
        m = gc.MLP([3] + [3] * n + [2], norm="batch", seed=0)
        path = tmp_path / f"m{n}.npz"
        gc.save(m, path)
        opens.clear()
        m2 = gc.load(path)
        n_members = len(m.state_dict()) + 1
        assert len(opens) <= 2 * n_members, (n, len(opens), n_members)
        same_model(m, m2)

    class Key(str):
        compared = 0

        def __eq__(self, other):
            Key.compared += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    counts = {}
    for n in (100, 400):
        m = gc.MLP([3] + [3] * n + [2], norm="batch", seed=0)
        sd = {Key(k): np.array(v) for k, v in m.state_dict().items()}
        Key.compared = 0
        m.load_state_dict(sd)
        counts[n] = Key.compared
    assert counts[400] <= 4 * counts[100] + 100, counts


def test_check_memory_is_called_with_the_total_before_building(tmp_path, monkeypatch):
    m = gc.MLP([4, 30, 20, 3], norm="batch", dtype=np.float64, seed=0)
    gc.save(m, tmp_path / "m.npz")
    seen = []

    def refuse(nbytes, what):
        seen.append((nbytes, what))
        raise MemoryError(f"{what} needs {nbytes} bytes")

    built = []
    monkeypatch.setattr(gio, "require", refuse)
    monkeypatch.setattr(gc.MLP, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(MemoryError, match=re.escape("MLP with sizes [4, 30, 20, 3] (float64)")):
        gc.load(tmp_path / "m.npz")
    assert not built, "the model was built before the memory check"
    n_params = m.num_parameters() + sum(b.size for _, b in m.named_buffers())
    assert seen[0][0] >= 2 * n_params * 8
