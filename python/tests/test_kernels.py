"""divnet.kernel, divnet.gram and divnet.sample against numpy and the command line; input
dtypes and layouts; no copy for float32/float16 in C order; the GIL released."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

import divnet
from divnet import _divnet


def rbf_reference(a: np.ndarray, beta: float, eps: float) -> np.ndarray:
    """exp(-beta ||v_i - v_j||^2) + eps I over the columns, in float64."""
    v = a.astype(np.float64).T
    d = ((v[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    return np.exp(-beta * d) + eps * np.eye(len(v))


def layer(rng: np.random.Generator, m: int = 300, n: int = 24) -> np.ndarray:
    """ReLU activations with correlated neurons, float32, C order."""
    x = rng.normal(size=(m, 12)).astype(np.float32)
    w = rng.normal(size=(12, n)).astype(np.float32) / 3
    return np.maximum(x @ w, 0).astype(np.float32)


def test_rbf_kernel_matches_numpy(rng):
    a = layer(rng)
    m = a.shape[0]
    got = divnet.kernel(a)
    assert got.dtype == np.float64 and got.shape == (24, 24)
    np.testing.assert_allclose(got, rbf_reference(a, 10.0 / m, 1e-6), rtol=0, atol=1e-5)
    got = divnet.kernel(a, beta=0.5, eps=0.0)
    np.testing.assert_allclose(got, rbf_reference(a, 0.5, 0.0), rtol=0, atol=1e-5)


def test_median_beta(rng):
    a = layer(rng)
    v = a.astype(np.float64).T
    d = ((v[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    beta = 1.0 / np.median(d[np.triu_indices(len(v), 1)])
    np.testing.assert_allclose(
        divnet.kernel(a, beta="median"), rbf_reference(a, beta, 1e-6), rtol=0, atol=1e-5
    )


def test_gram_matches_numpy(rng):
    a = layer(rng)
    g, s = divnet.gram(a)
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(g, a64.T @ a64, rtol=1e-5)
    np.testing.assert_allclose(s, a64.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(divnet.kernel(a, kind="gram"), g)


def test_dtypes_and_layouts_give_the_float32_result(rng):
    a64 = layer(rng).astype(np.float64) + rng.normal(size=(300, 24)) * 1e-3
    a32 = a64.astype(np.float32)
    a16 = a64.astype(np.float16)
    reference = divnet.kernel(a32)
    # float64 is rounded to float32, once; the layout does not matter.
    np.testing.assert_array_equal(divnet.kernel(a64), reference)
    np.testing.assert_array_equal(divnet.kernel(np.asfortranarray(a32)), reference)
    np.testing.assert_array_equal(divnet.kernel(np.asfortranarray(a64)), reference)
    np.testing.assert_array_equal(divnet.kernel(a32.astype(">f4")), reference)
    wide = np.zeros((300, 48), np.float32)
    wide[:, ::2] = a32
    np.testing.assert_array_equal(divnet.kernel(wide[:, ::2]), reference)
    # float16 goes in as float16; its values are exact in float32.
    np.testing.assert_array_equal(divnet.kernel(a16), divnet.kernel(a16.astype(np.float32)))
    np.testing.assert_array_equal(
        divnet.kernel(np.asfortranarray(a16)), divnet.kernel(a16.astype(np.float32))
    )
    np.testing.assert_array_equal(divnet.gram(a16)[0], divnet.gram(a16.astype(np.float32))[0])
    # Lists work too.
    np.testing.assert_array_equal(divnet.kernel(a32.tolist()), divnet.kernel(a64.tolist()))


def test_float32_and_float16_in_c_order_are_not_copied(rng):
    a32 = layer(rng)
    address, copied = _divnet._activation_view(a32)
    assert (address, copied) == (a32.ctypes.data, False)
    a16 = a32.astype(np.float16)
    assert _divnet._activation_view(a16) == (a16.ctypes.data, False)
    rows = a32[10:50]  # a C-contiguous view into a32
    assert _divnet._activation_view(rows) == (rows.ctypes.data, False)
    for converted in (np.asfortranarray(a32), a32.astype(np.float64), a32[:, ::2]):
        address, copied = _divnet._activation_view(converted)
        assert copied and address != converted.ctypes.data


def test_bad_arrays_are_named(rng):
    with pytest.raises(divnet.FormatError, match=r"^activations: expected a 2-D array"):
        divnet.kernel(np.ones(5, np.float32))
    with pytest.raises(
        divnet.FormatError,
        match=r"^activations: dtype int64 is not supported here: expected float16, float32 or float64$",
    ):
        divnet.kernel(np.ones((4, 3), np.int64))
    with pytest.raises(divnet.FormatError, match=r"empty array of shape \[0, 3\]"):
        divnet.gram(np.ones((0, 3), np.float32))
    a = layer(rng)
    a[7, 3] = np.nan
    with pytest.raises(
        divnet.FormatError,
        match=r"^activations: non-finite value \(NaN or Inf\) at row 7, column 3$",
    ):
        divnet.kernel(a)
    # A float64 value beyond float32's range is infinite once rounded: caught the same way.
    b = layer(rng).astype(np.float64)
    b[2, 5] = 1e300
    with pytest.raises(divnet.FormatError, match="at row 2, column 5"):
        divnet.gram(b)
    with pytest.raises(divnet.InvalidInputError, match="unknown backend"):
        divnet.gram(layer(rng), backend="tpu")


def test_errors_are_the_command_lines(rng, cli, tmp_path):
    a = layer(rng)
    np.save(tmp_path / "a.npy", a)
    with pytest.raises(divnet.InvalidInputError) as e:
        divnet.kernel(a, beta="wide")
    assert isinstance(e.value, ValueError)
    assert str(e.value) in cli.fail(
        ["kernel", "--activations", "a.npy", "--beta", "wide", "--out", "l.npy"], tmp_path
    )
    a[4, 1] = np.inf
    np.save(tmp_path / "bad.npy", a)
    with pytest.raises(divnet.FormatError) as e:
        divnet.kernel(a)
    assert str(e.value) == cli.fail(
        ["kernel", "--activations", "bad.npy", "--out", "l.npy"], tmp_path
    ).replace("bad.npy", "activations")
    square = np.eye(6)
    np.save(tmp_path / "l.npy", square)
    with pytest.raises(divnet.InvalidInputError) as e:
        divnet.sample(square, k=9)
    # The argument's name where the command names the file.
    assert str(e.value) == cli.fail(
        ["sample", "--kernel", "l.npy", "-k", "9"], tmp_path
    ).replace("l.npy", "kernel")
    for k in (0, 9):
        with pytest.raises(divnet.InvalidInputError) as e:
            divnet.sample(square, method="greedy", k=k)
        assert str(e.value) == cli.fail(
            ["sample", "--kernel", "l.npy", "--greedy", str(k)], tmp_path
        ).replace("l.npy", "kernel")


def test_kernel_is_the_command_lines(rng, cli, tmp_path):
    a = layer(rng).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    for args, kwargs in [
        ([], {}),
        (["--kind", "gram"], {"kind": "gram"}),
        (["--beta", "median", "--eps", "0.01"], {"beta": "median", "eps": 0.01}),
    ]:
        cli.run(["kernel", "--activations", "a.npy", *args, "--out", "l.npy"], tmp_path)
        np.testing.assert_array_equal(divnet.kernel(a, **kwargs), np.load(tmp_path / "l.npy"))


def test_sample_sizes_and_seeds(rng):
    a = layer(rng, n=30)
    l = divnet.kernel(a, beta="median")
    for k in (1, 5, 30):
        y = divnet.sample(l, k=k, seed=3)
        assert len(y) == k and y == sorted(set(y)) and all(0 <= i < 30 for i in y)
    assert divnet.sample(l, k=5, seed=3) == divnet.sample(l, k=5, seed=3)
    draws = divnet.sample(l, k=5, samples=20, seed=3)
    assert len(draws) == 20 and draws[0] == divnet.sample(l, k=5, seed=3)
    assert len({tuple(d) for d in draws}) > 1
    assert divnet.sample(l, k=5, samples=20, seed=3) == draws
    assert divnet.sample(l, k=5, samples=20, seed=4) != draws
    for d in divnet.sample(l, method="dpp", samples=10, seed=1):
        assert d == sorted(set(d))
    greedy = divnet.sample(l, method="greedy", k=6)
    assert len(greedy) == 6 and greedy == divnet.sample(
        activations=a, beta="median", method="greedy", k=6
    )
    random = divnet.sample(l, method="random", k=7, samples=3, seed=2)
    assert [len(r) for r in random] == [7, 7, 7] and all(r == sorted(set(r)) for r in random)
    w = rng.normal(size=(4, 30)).astype(np.float32)
    important = divnet.sample(activations=a, method="importance", k=5, next_weight=w)
    g, _ = divnet.gram(a)
    score = np.linalg.norm(w.astype(np.float64), axis=0) * np.sqrt(np.diag(g) / a.shape[0])
    assert important == sorted(np.argsort(-score, kind="stable")[:5].tolist())


def test_sample_argument_errors(rng):
    l = divnet.kernel(layer(rng))
    with pytest.raises(divnet.InvalidInputError, match="kdpp needs a number of neurons"):
        divnet.sample(l)
    with pytest.raises(divnet.InvalidInputError, match="a DPP chooses its own size"):
        divnet.sample(l, method="dpp", k=3)
    with pytest.raises(divnet.InvalidInputError, match="deterministic"):
        divnet.sample(l, method="greedy", k=3, samples=2)
    with pytest.raises(divnet.InvalidInputError, match="cannot keep 99 of 24 neurons"):
        divnet.sample(l, method="random", k=99)
    with pytest.raises(divnet.InvalidInputError, match="unknown selection method"):
        divnet.sample(l, method="best", k=3)
    with pytest.raises(divnet.FormatError, match=r"^kernel: a kernel must be square"):
        divnet.sample(np.ones((3, 4)), k=2)
    # An empty kernel: the command's words for an empty array, not "must be square".
    with pytest.raises(divnet.FormatError, match=r"^kernel: empty array of shape \[0, 0\]"):
        divnet.sample(np.ones((0, 0)), k=2)
    with pytest.raises(divnet.InvalidInputError, match="importance selection needs"):
        divnet.sample(activations=layer(rng), method="importance", k=3)


def test_sample_is_the_command_lines(rng, cli, tmp_path):
    a = layer(rng, n=20)
    np.save(tmp_path / "a.npy", a)
    l = divnet.kernel(a, beta="median")
    np.save(tmp_path / "l.npy", l)

    def lines(*args: str) -> list[list[int]]:
        out = cli.run(["sample", *args], tmp_path)
        return [json.loads(line) for line in out.splitlines()]

    assert lines("--kernel", "l.npy", "-k", "6", "--samples", "4", "--seed", "9") == divnet.sample(
        l, k=6, samples=4, seed=9
    )
    assert lines("--kernel", "l.npy", "--dpp", "--samples", "3", "--seed", "2") == divnet.sample(
        l, method="dpp", samples=3, seed=2
    )
    assert lines("--activations", "a.npy", "--greedy", "5") == [
        divnet.sample(activations=a, method="greedy", k=5)
    ]
    assert lines("--activations", "a.npy", "-k", "5") == [divnet.sample(activations=a, k=5)]


def test_the_gil_is_released_during_the_work(rng):
    # Enough rows for one call to last a while on this machine (doubled until it does).
    a = rng.normal(size=(10_000, 512)).astype(np.float32)
    while True:
        start = time.perf_counter()
        divnet.gram(a, backend="cpu")
        if time.perf_counter() - start > 0.2 or len(a) >= 160_000:
            break
        a = np.concatenate([a, a])
    window: list[float] = []

    def work() -> None:
        window.append(time.perf_counter())
        divnet.gram(a, backend="cpu")
        window.append(time.perf_counter())

    thread = threading.Thread(target=work)
    ticks = []
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    thread.join()
    start, end = window
    assert end - start > 0.05, "the work was too short to tell"
    inside = [t for t in ticks if start + 0.01 < t < end - 0.01]
    # With the GIL held for the whole call, this thread could not run until it returned.
    assert len(inside) >= 5, (len(inside), end - start)


def test_gpu_backend_matches_the_cpu(rng):
    """The WGSL kernels, from Python: on lavapipe where there is no GPU (CI requires an
    adapter with DIVNET_REQUIRE_GPU=1)."""
    a = layer(rng, m=500, n=40)
    try:
        g_gpu, s_gpu = divnet.gram(a, backend="gpu")
    except divnet.NoAdapterError as e:
        if os.environ.get("DIVNET_REQUIRE_GPU") == "1":
            raise
        pytest.skip(f"no GPU adapter: {e}")
    g_cpu, s_cpu = divnet.gram(a, backend="cpu")
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-5)
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-5)
    np.testing.assert_allclose(
        divnet.kernel(a, backend="gpu"), divnet.kernel(a, backend="cpu"), rtol=0, atol=1e-5
    )


def _in_a_forked_child(work):
    """Runs `work` in a child forked from this process; returns what it returned or the name
    of the exception it raised."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        return pool.apply_async(work).get(timeout=60)


def _gram_in_child():
    try:
        divnet.gram(np.ones((8, 3), np.float32), backend="cpu")
        return "ran"
    except divnet.DivnetError as e:
        return type(e).__name__


def test_a_child_forked_after_divnet_worked_is_refused_not_hung(rng):
    # Once the parent has used divnet, its thread pool does not exist in a forked child,
    # whose first parallel step waited for it forever.
    divnet.gram(layer(rng), backend="cpu")
    assert _in_a_forked_child(_gram_in_child) == "ForkedProcessError"
    assert issubclass(divnet.ForkedProcessError, RuntimeError)
