"""divnet.compress_layer against a numpy least-squares reference and the command line;
activations in chunks; divnet.compress against `divnet compress`, the README's example
included."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REPO
from safetensors.numpy import load_file, save_file

import divnet


def ffn(rng: np.random.Generator, m: int = 400, d: int = 10, n: int = 16, n_out: int = 6):
    """A small FFN: up (n x d) with bias, down (n_out x n) with bias, and the hidden
    activations on m inputs, where neurons 12..15 are exact linear combinations of
    neurons 0..11 plus a constant (so fusion can absorb them exactly)."""
    x = rng.normal(size=(m, d)).astype(np.float32)
    up_w = rng.normal(size=(n, d)).astype(np.float32)
    up_b = rng.normal(size=n).astype(np.float32)
    h = np.maximum(x @ up_w.T + up_b, 0)
    mix = rng.normal(size=(12, 4)).astype(np.float32)
    h[:, 12:] = h[:, :12] @ mix + np.float32(0.5)
    weights = {
        "up.weight": up_w,
        "up.bias": up_b,
        "down.weight": rng.normal(size=(n_out, n)).astype(np.float32),
        "down.bias": rng.normal(size=n_out).astype(np.float32),
        "other": np.arange(3),
    }
    return h.astype(np.float32), weights


def fused_reference(a, w, b, keep, ridge_factor):
    """W'_Y = W_Y + W_P C_top^T, b' = b + W_P c_last, C from the ridge-regularised normal
    equations of a_P ~ C^T [a_Y; 1] (ridge regression with a free intercept: the ridge,
    ridge_factor times the mean variance of the kept neurons, damps C_top only), in float64."""
    a = a.astype(np.float64)
    n = a.shape[1]
    drop = [i for i in range(n) if i not in keep]
    u = np.hstack([a[:, keep], np.ones((len(a), 1))])
    lhs = u.T @ u
    centred = a[:, keep] - a[:, keep].mean(axis=0)
    ridge = ridge_factor * np.trace(centred.T @ centred) / len(keep)
    lhs[: len(keep), : len(keep)] += ridge * np.eye(len(keep))
    c = np.linalg.solve(lhs, u.T @ a[:, drop])
    w = w.astype(np.float64)
    return w[:, keep] + w[:, drop] @ c[:-1].T, b + w[:, drop] @ c[-1]


def test_compress_layer_matches_least_squares(rng):
    a, weights = ffn(rng)
    keep = [0, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    out, report = divnet.compress_layer(a, weights, next="down", prev="up", keep=keep)
    w_ref, b_ref = fused_reference(
        a, weights["down.weight"], weights["down.bias"], keep, divnet.DEFAULT_RIDGE_FACTOR
    )
    np.testing.assert_allclose(out["down.weight"], w_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["down.bias"], b_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["up.weight"], weights["up.weight"][keep])
    np.testing.assert_array_equal(out["up.bias"], weights["up.bias"][keep])
    assert out["other"] is weights["other"]
    assert report["kept"] == keep and report["method"] == "given" and report["fusion"] == "fuse"
    assert report["samples"] == len(a) and report["neurons_before"] == 16
    assert report["backend"] in ("cpu", "gpu")


def next_layer_error(a, weights, kept, out):
    """||Z - Z'|| / ||Z|| of the next layer's pre-activation on the calibration rows."""
    z = a.astype(np.float64) @ weights["down.weight"].T + weights["down.bias"]
    z_new = a[:, kept].astype(np.float64) @ out["down.weight"].T + out["down.bias"]
    return np.linalg.norm(z - z_new) / np.linalg.norm(z)


def test_dropped_combinations_are_absorbed_exactly(rng):
    a, weights = ffn(rng)
    kept = list(range(12))
    out, report = divnet.compress_layer(a, weights, next="down", keep=kept)
    assert next_layer_error(a, weights, kept, out) < 1e-4
    assert report["relative_error"] < 1e-4


def test_reported_error_is_the_measured_one(rng):
    a, weights = ffn(rng)
    out, report = divnet.compress_layer(a, weights, next="down", k=6, method="greedy")
    measured = next_layer_error(a, weights, report["kept"], out)
    assert measured > 1e-2
    assert report["relative_error"] == pytest.approx(measured, rel=1e-3)


def test_dtypes_of_the_weights_are_kept(rng):
    a, weights = ffn(rng)
    half = {name: w.astype(np.float16) for name, w in weights.items() if name != "other"}
    half["down.weight"] = np.asfortranarray(weights["down.weight"].astype(np.float64))
    out, _ = divnet.compress_layer(a.astype(np.float64), half, next="down", prev="up", k=10)
    assert out["up.weight"].dtype == np.float16 and out["up.weight"].shape == (10, 10)
    assert out["down.weight"].dtype == np.float64 and out["down.weight"].shape == (6, 10)
    assert out["down.bias"].dtype == np.float16


def test_bias_is_created_for_the_fused_constant(rng):
    a, weights = ffn(rng)
    del weights["down.bias"]
    out, report = divnet.compress_layer(a, weights, next="down", k=8)
    assert out["down.bias"].shape == (6,) and out["down.bias"].dtype == np.float32
    assert any("down.bias: created" in note for note in report["notes"])
    out, _ = divnet.compress_layer(a, weights, next="down", k=8, fusion="fuse-no-bias")
    assert "down.bias" not in out
    out, report = divnet.compress_layer(a, weights, next="down", k=8, fusion="prune")
    np.testing.assert_array_equal(out["down.weight"], weights["down.weight"][:, report["kept"]])


def test_several_next_layers_are_fused_together(rng):
    a, weights = ffn(rng)
    weights["side.weight"] = rng.normal(size=(3, 16)).astype(np.float32)
    both, _ = divnet.compress_layer(a, weights, next=["down", "side"], keep=list(range(12)))
    alone, _ = divnet.compress_layer(a, weights, next="down", keep=list(range(12)))
    np.testing.assert_allclose(both["down.weight"], alone["down.weight"], rtol=1e-5, atol=1e-6)
    assert both["side.weight"].shape == (3, 12)


def test_same_seed_same_selection_as_sample(rng):
    a, weights = ffn(rng)
    _, report = divnet.compress_layer(a, weights, next="down", k=7, seed=5)
    assert report["kept"] == divnet.sample(activations=a, k=7, seed=5)
    assert report["method"] == "kdpp" and report["beta"] == pytest.approx(10 / len(a))


def test_chunks_stream_like_the_whole_array(rng):
    a, weights = ffn(rng)
    whole, report = divnet.compress_layer(a, weights, next="down", prev="up", k=9, method="greedy")
    chunks = [a[i : i + 64] for i in range(0, len(a), 64)]
    for activations in (chunks, lambda: iter(chunks), tuple(c.astype(np.float64) for c in chunks)):
        streamed, streamed_report = divnet.compress_layer(
            activations, weights, next="down", prev="up", k=9, method="greedy"
        )
        assert streamed_report["kept"] == report["kept"]
        assert streamed_report["samples"] == len(a)
        for name in ("down.weight", "down.bias", "up.weight"):
            np.testing.assert_allclose(streamed[name], whole[name], rtol=1e-4, atol=1e-5)


def test_chunk_errors(rng):
    a, weights = ffn(rng)
    with pytest.raises(divnet.InvalidInputError, match="iterator can be read only once"):
        divnet.compress_layer(iter([a]), weights, next="down", k=4)
    with pytest.raises(
        divnet.InvalidInputError, match="activation chunk 1 has 5 columns, expected 16"
    ):
        divnet.compress_layer([a, a[:, :5]], weights, next="down", k=4)
    with pytest.raises(divnet.FormatError, match=r"^activation chunk 0: expected a 2-D array"):
        divnet.compress_layer([a[0]], weights, next="down", k=4)

    def broken():
        yield a[:10]
        raise KeyError("from the caller's code")

    # The caller's own exception comes back as it was raised.
    with pytest.raises(KeyError, match="from the caller's code"):
        divnet.compress_layer(broken, weights, next="down", k=4)
    with pytest.raises(divnet.InvalidInputError, match="no rows on this pass"):
        divnet.compress_layer(list, weights, next="down", k=4)


def test_keep_argument_errors(rng):
    a, weights = ffn(rng)
    with pytest.raises(divnet.InvalidInputError, match="^say which neurons to keep"):
        divnet.compress_layer(a, weights, next="down")
    with pytest.raises(divnet.InvalidInputError, match="only one of"):
        divnet.compress_layer(a, weights, next="down", k=3, keep_ratio=0.5)
    with pytest.raises(divnet.InvalidInputError, match="chooses its own size"):
        divnet.compress_layer(a, weights, next="down", k=3, method="dpp")
    with pytest.raises(divnet.InvalidInputError, match="keep index 3 appears twice"):
        divnet.compress_layer(a, weights, next="down", keep=[3, 1, 3])
    with pytest.raises(divnet.InvalidInputError, match="unknown fusion"):
        divnet.compress_layer(a, weights, next="down", k=3, fusion="merge")


def npy_and_safetensors(tmp_path, a, weights):
    np.save(tmp_path / "a.npy", a)
    save_file({n: w for n, w in weights.items() if n != "other"}, str(tmp_path / "w.safetensors"))


def test_compress_layer_is_the_command_lines(rng, cli, tmp_path):
    a, weights = ffn(rng)
    npy_and_safetensors(tmp_path, a, weights)
    common = [
        "compress-layer",
        "--activations",
        "a.npy",
        "--weights",
        "w.safetensors",
        "--next",
        "down",
        "--prev",
        "up",
        "--out",
        "o.safetensors",
        "--report",
        "r.json",
    ]
    for args, kwargs in [
        (["-k", "9", "--seed", "4"], dict(k=9, seed=4)),
        (
            ["--keep-ratio", "0.5", "--select", "greedy", "--no-bias"],
            dict(keep_ratio=0.5, method="greedy", fusion="fuse-no-bias"),
        ),
        (["--select", "dpp", "--beta", "median"], dict(method="dpp", beta="median")),
        (
            ["-k", "5", "--select", "importance", "--no-fusion"],
            dict(k=5, method="importance", fusion="prune"),
        ),
        (["-k", "6", "--select", "fusion-swap"], dict(k=6, method="fusion-swap")),
    ]:
        cli.run(common + args, tmp_path)
        out, report = divnet.compress_layer(a, weights, next="down", prev="up", **kwargs)
        expected = load_file(str(tmp_path / "o.safetensors"))
        assert set(expected) <= set(out)
        for name, value in expected.items():
            np.testing.assert_array_equal(out[name], value, err_msg=f"{name} with {args}")
        cli_report = cli.report(tmp_path / "r.json")
        for key in ("kept", "method", "fusion", "beta", "ridge", "relative_error", "samples"):
            assert report[key] == cli_report[key], key
        # The same keys, the plan included (its memory figures depend on the process).
        assert set(report) == set(cli_report)
        assert report["plan"]["route"] == cli_report["plan"]["route"]
    # The same messages for the same mistakes.
    with pytest.raises(divnet.InvalidInputError) as e:
        divnet.compress_layer(a, weights, next="down", k=50)
    assert str(e.value) == cli.fail(common[:7] + ["--out", "o.safetensors", "-k", "50"], tmp_path)
    with pytest.raises(divnet.FormatError) as e:
        divnet.compress_layer(a, weights, next="nope", k=5)
    assert str(e.value) == cli.fail(
        common[:5] + ["--next", "nope", "--out", "o.safetensors", "-k", "5"], tmp_path
    ).replace("w.safetensors", "weights")
    with pytest.raises(divnet.FormatError) as e:
        divnet.compress_layer(a, weights, next="down", prev="down", k=5)
    assert str(e.value) == cli.fail(
        common[:7] + ["--prev", "down", "--out", "o.safetensors", "-k", "5"], tmp_path
    ).replace("w.safetensors", "weights")


def mlp(rng: np.random.Generator, dims=(20, 32, 24, 5), m: int = 300):
    state_dict = {}
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        state_dict[f"fc{i + 1}.weight"] = (rng.normal(size=(d_out, d_in)) / np.sqrt(d_in)).astype(
            np.float32
        )
        state_dict[f"fc{i + 1}.bias"] = rng.normal(size=d_out).astype(np.float32) * 0.1
    x = rng.normal(size=(m, dims[0])).astype(np.float32)
    return state_dict, x


def assert_same_as_cli(cli, tmp_path, state_dict, x, args, small, report):
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    np.save(tmp_path / "calib.npy", x)
    cli.run(
        [
            "compress",
            "--model",
            "model.safetensors",
            "--calibration",
            "calib.npy",
            *args,
            "--out",
            "small.safetensors",
            "--report",
            "report.json",
        ],
        tmp_path,
    )
    expected = load_file(str(tmp_path / "small.safetensors"))
    assert sorted(expected) == sorted(small)
    for name, value in expected.items():
        assert small[name].dtype == value.dtype and small[name].shape == value.shape
        np.testing.assert_array_equal(small[name], value, err_msg=f"{name} with {args}")
    cli_report = cli.report(tmp_path / "report.json")
    assert [l["kept"] for l in report["layers"]] == [l["kept"] for l in cli_report["layers"]]
    for key in ("backend", "samples", "params_before", "params_after"):
        assert report[key] == cli_report[key], key


def test_compress_is_the_command_lines(rng, cli, tmp_path):
    state_dict, x = mlp(rng)
    for args, kwargs in [
        (["-k", "12,9", "--seed", "3"], dict(k=[12, 9], seed=3)),
        (
            ["--keep-ratio", "0.5", "--select", "greedy", "--activation", "tanh"],
            dict(keep_ratio=0.5, method="greedy", activation="tanh"),
        ),
        (
            ["--dpp", "--beta", "median", "--no-fusion"],
            dict(method="dpp", beta="median", fusion="prune"),
        ),
        (
            ["-k", "8", "--select", "importance", "--chunk-rows", "64"],
            dict(k=8, method="importance", chunk_rows=64),
        ),
    ]:
        small, report = divnet.compress(state_dict, x, **kwargs)
        assert_same_as_cli(cli, tmp_path, state_dict, x, args, small, report)
    np.save(tmp_path / "short.npy", x[:, :5])
    with pytest.raises(divnet.FormatError) as e:
        divnet.compress(state_dict, x[:, :5], k=4)
    assert str(e.value).startswith("calibration: 5 features per row")
    assert str(e.value) == cli.fail(
        [
            "compress",
            "--model",
            "model.safetensors",
            "--calibration",
            "short.npy",
            "-k",
            "4",
            "--out",
            "o.safetensors",
        ],
        tmp_path,
    ).replace("short.npy", "calibration")


def test_compress_keeps_dtypes_and_other_entries(rng):
    state_dict, x = mlp(rng)
    state_dict = {n: w.astype(np.float16) for n, w in state_dict.items()}
    state_dict["steps"] = np.array(7)
    small, report = divnet.compress(state_dict, x.astype(np.float64), k=10, method="greedy")
    assert small["fc1.weight"].dtype == np.float16 and small["fc1.weight"].shape == (10, 20)
    assert small["fc3.weight"].shape == (5, 10)
    assert small["steps"] is state_dict["steps"]
    assert [l["name"] for l in report["layers"]] == ["fc1", "fc2"]


def readme_example() -> str:
    """The Python example of the repository README."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md has no Python example"
    return match.group(1)


def test_readme_example_is_the_command_lines(cli, tmp_path, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.strip(), "the example prints what it did"
    small, report = namespace["small"], namespace["report"]
    k = [len(layer["kept"]) for layer in report["layers"]]
    assert_same_as_cli(
        cli,
        tmp_path,
        namespace["state_dict"],
        namespace["x"],
        ["-k", ",".join(map(str, k))],
        small,
        report,
    )


class _LazyChunk:
    """A chunk that builds a new array each time numpy asks (as h5py, zarr and dask datasets
    do): nothing but the converted array itself keeps the values alive."""

    def __init__(self, values):
        self.shape = values.shape
        self._bytes = values.tobytes()
        self._dtype = values.dtype

    def __array__(self, dtype=None, copy=None):
        array = np.frombuffer(self._bytes, self._dtype).reshape(self.shape).copy()
        return array if dtype is None else array.astype(dtype)


def test_chunks_that_make_their_arrays_on_demand_stream_like_plain_ones(rng):
    # The library read freed memory here: different neurons, or a crash.
    a, weights = ffn(rng, m=2000)
    plain, plain_report = divnet.compress_layer(
        [a[i : i + 500] for i in range(0, 2000, 500)], weights, next="down", k=9, seed=3
    )
    lazy, lazy_report = divnet.compress_layer(
        [_LazyChunk(a[i : i + 500]) for i in range(0, 2000, 500)],
        weights,
        next="down",
        k=9,
        seed=3,
    )
    assert lazy_report["kept"] == plain_report["kept"]
    np.testing.assert_array_equal(lazy["down.weight"], plain["down.weight"])


def test_unaligned_arrays_are_copied_not_a_panic(rng):
    a, weights = ffn(rng)

    def unaligned(values):
        buffer = bytearray(values.nbytes + 1)
        out = np.frombuffer(buffer, values.dtype, count=values.size, offset=1)
        out = out.reshape(values.shape)
        out[...] = values
        assert not out.flags.aligned
        return out

    reference = divnet.kernel(a, backend="cpu")
    np.testing.assert_array_equal(divnet.kernel(unaligned(a), backend="cpu"), reference)
    moved = dict(weights, **{"down.weight": unaligned(weights["down.weight"])})
    got, _ = divnet.compress_layer([unaligned(a)], moved, next="down", k=4, method="greedy")
    want, _ = divnet.compress_layer(a, weights, next="down", k=4, method="greedy")
    np.testing.assert_array_equal(got["down.weight"], want["down.weight"])
    assert divnet.sample(unaligned(reference), k=3) == divnet.sample(reference, k=3)


def test_compress_refuses_an_integer_layer_tensor_as_the_command_does(rng):
    state_dict, x = mlp(rng)
    # An integer bias was dropped and refitted as if absent; an integer weight took its layer
    # out of the chain, and the model came back broken.
    for name, value in [
        ("fc2.bias", np.full(24, 100, np.int64)),
        ("fc2.weight", rng.integers(-3, 3, (24, 32)).astype(np.int8)),
    ]:
        bad = dict(state_dict, **{name: value})
        with pytest.raises(divnet.FormatError, match=f"^state_dict: tensor {name}: dtype I"):
            divnet.compress(bad, x, k=10)


def test_compress_takes_numpy_counts_comma_layers_and_skips_non_string_keys(rng):
    state_dict, x = mlp(rng)
    small, report = divnet.compress(state_dict, x, k=10, method="greedy")
    for layers, k in [("fc1,fc2,fc3", np.array([10, 10])), (["fc1", "fc2", "fc3"], np.int64(10))]:
        extra = {**state_dict, 7: np.zeros(3)}
        again, again_report = divnet.compress(extra, x, k=k, method="greedy", layers=layers)
        assert again_report["layers"][1]["kept"] == report["layers"][1]["kept"]
        np.testing.assert_array_equal(again["fc3.weight"], small["fc3.weight"])


def test_negative_counts_and_masks_are_refused_as_divnet_errors(rng):
    a, weights = ffn(rng)
    with pytest.raises(divnet.InvalidInputError, match="^k must be at least 0, got -1"):
        divnet.compress_layer(a, weights, next="down", k=-1)
    with pytest.raises(divnet.InvalidInputError, match="^seed must be at least 0"):
        divnet.compress_layer(a, weights, next="down", k=2, seed=-1)
    with pytest.raises(divnet.InvalidInputError, match="^keep index must be at least 0"):
        divnet.compress_layer(a, weights, next="down", keep=[-1])
    with pytest.raises(divnet.InvalidInputError, match="not a boolean mask"):
        divnet.compress_layer(a, weights, next="down", keep=np.arange(16) < 4)
    with pytest.raises(divnet.InvalidInputError, match="^samples must be at least 0"):
        divnet.sample(np.eye(4), k=2, samples=-2)
    with pytest.raises(divnet.InvalidInputError, match="does not offer fusion-greedy"):
        divnet.sample(activations=a, method="fusion-greedy", k=2, next_weight=weights["down.weight"])
