#!/usr/bin/env python3
"""Checks that a safetensors file written by divnet loads with the reference Python package.

usage: check_safetensors.py FILE EXPECTED.json

EXPECTED.json: {"tensors": {name: {"dtype": "F32", "shape": [..], "values": [..]}},
                "metadata": {..} or null}
Float values are the f32 values before encoding: F16 must equal numpy's own rounding of
them, BF16 must be within bfloat16 precision, F32/F64 exact; integers exact.
Exit code 0 and "ok" on success, 1 and a message on the first mismatch.
"""
import json
import sys

import numpy as np
import safetensors
import safetensors.numpy


def fail(msg):
    print(f"check_safetensors: {msg}")
    sys.exit(1)


def decode(dtype, data):
    if dtype == "BF16":
        raw = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32)
    np_types = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}
    if dtype not in np_types:
        fail(f"unexpected dtype {dtype}")
    return np.frombuffer(data, dtype=np_types[dtype])


def main():
    path, expected_path = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_path))
    raw = open(path, "rb").read()
    tensors = dict(safetensors.deserialize(raw))
    want = expected["tensors"]
    if set(tensors) != set(want):
        fail(f"names {sorted(tensors)} != expected {sorted(want)}")
    for name, spec in want.items():
        got = tensors[name]
        if got["dtype"] != spec["dtype"]:
            fail(f"{name}: dtype {got['dtype']} != {spec['dtype']}")
        if list(got["shape"]) != spec["shape"]:
            fail(f"{name}: shape {got['shape']} != {spec['shape']}")
        values = decode(got["dtype"], bytes(got["data"]))
        ref = np.asarray(spec["values"], dtype=np.float64)
        if values.size != ref.size:
            fail(f"{name}: {values.size} values, expected {ref.size}")
        d = spec["dtype"]
        if d == "F16":
            ok = np.array_equal(values, ref.astype(np.float32).astype(np.float16))
        elif d == "BF16":
            ok = np.allclose(values, ref, rtol=2.0**-8, atol=0)
        elif d == "F32":
            ok = np.array_equal(values, ref.astype(np.float32))
        else:
            ok = np.array_equal(values.astype(np.float64), ref)
        if not ok:
            fail(f"{name}: values differ: {values[:8]} vs {ref[:8]}")
    # The numpy front end (no bfloat16 in numpy): every other file must load through it too.
    if all(s["dtype"] != "BF16" for s in want.values()):
        loaded = safetensors.numpy.load_file(path)
        for name, spec in want.items():
            if list(loaded[name].shape) != spec["shape"]:
                fail(f"{name}: numpy loader gives shape {loaded[name].shape}")
    with safetensors.safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    if (meta or None) != (expected.get("metadata") or None):
        fail(f"metadata {meta} != expected {expected.get('metadata')}")
    print("ok")


if __name__ == "__main__":
    main()
