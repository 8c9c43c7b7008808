#!/usr/bin/env python3
"""Writes a synthetic ReLU layer for timing `divnet compress-layer` and `divnet bench`.

usage: make_layer.py OUT_DIR [--m 32768] [--n 8192] [--d 256] [--n-out 1024]
                     [--dtype float16] [--seed 0]

OUT_DIR/acts.npy      m x n activations relu(X W1^T + b1), X ~ N(0, 1) of width d, as
                      --dtype (float16 by default, as large layers are usually stored);
OUT_DIR/layer.safetensors  fc1.weight [n, d], fc1.bias [n] (the layer that produced them) and
                      fc2.weight [n_out, n], fc2.bias [n_out] (the layer reading them), f32.

The neurons are correlated (they share d << n inputs) and about half of each neuron's values
are zero, as in a trained ReLU layer. Rows are written in chunks, so memory stays at a few
hundred MB whatever m is. Only numpy is needed.
"""
import argparse
import json
import os
import struct

import numpy as np


def write_safetensors(path, tensors):
    """Minimal safetensors writer: 8-byte header length, JSON header, raw little-endian data."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--m", type=int, default=32768, help="samples (rows)")
    p.add_argument("--n", type=int, default=8192, help="neurons (columns)")
    p.add_argument("--d", type=int, default=256, help="inputs of the layer")
    p.add_argument("--n-out", type=int, default=1024, help="outputs of the next layer")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    w1 = rng.standard_normal((args.n, args.d), dtype=np.float32) / np.sqrt(args.d)
    b1 = 0.1 * rng.standard_normal(args.n, dtype=np.float32)
    w2 = rng.standard_normal((args.n_out, args.n), dtype=np.float32) / np.sqrt(args.n)
    b2 = 0.1 * rng.standard_normal(args.n_out, dtype=np.float32)

    path = os.path.join(args.out_dir, "acts.npy")
    tmp = path + ".tmp.npy"
    acts = np.lib.format.open_memmap(tmp, mode="w+", dtype=args.dtype, shape=(args.m, args.n))
    chunk = max(1, (1 << 25) // args.n)
    for start in range(0, args.m, chunk):
        stop = min(args.m, start + chunk)
        x = rng.standard_normal((stop - start, args.d), dtype=np.float32)
        acts[start:stop] = np.maximum(x @ w1.T + b1, 0.0).astype(args.dtype)
    acts.flush()
    del acts
    os.replace(tmp, path)

    write_safetensors(
        os.path.join(args.out_dir, "layer.safetensors"),
        {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2},
    )
    print(f"wrote {path}: {args.m} x {args.n} {args.dtype}; "
          f"{args.out_dir}/layer.safetensors: fc1 [{args.n}, {args.d}], fc2 [{args.n_out}, {args.n}]")


if __name__ == "__main__":
    main()
