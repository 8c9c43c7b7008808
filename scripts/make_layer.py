#!/usr/bin/env python3
"""A synthetic ReLU layer, as wide as asked, for the wide-layer benchmarks and tests.

The layer reads inputs X (m x d) whose coordinates have decaying scales (s_j = (1 + j)^-1/2,
so that a few input directions dominate and many neurons are correlated, as in a trained
network), through `up` (n x d, N(0, 1/d)) and a bias N(-0.1, 0.1^2):

    activations = relu(X up.weight^T + up.bias)       m x n, written as npy (f16 by default)
    down.weight  n_out x n, N(0, 1/n); down.bias n_out    (the next layer, to be fused)

Writes DIR/activations.npy and DIR/model.safetensors (tensors up.weight, up.bias, down.weight,
down.bias; f16 by default). The activations are computed and written in row chunks, so
generating m = 65536, n = 32768 (4.3 GB of f16) needs about as much memory as the weights.

    python3 scripts/make_layer.py --n 8192 --m 32768 --out target/wide-bench/n8192
    # then: divnet compress-layer --activations DIR/activations.npy \\
    #   --weights DIR/model.safetensors --next down --prev up -k 2048 --out small.safetensors

--sparse writes only the activations' header and extends the file to its full size without
writing data (a sparse file of zeros, no disk used): enough for `compress-layer --dry-run`,
which reads the header only. --fortran writes the activations in Fortran order.

Needs numpy and safetensors (`pip install numpy safetensors`).
"""

import argparse
import time
from pathlib import Path

import numpy as np

CHUNK_ROWS = 2048


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True, help="neurons of the layer")
    ap.add_argument("--m", type=int, required=True, help="calibration samples (rows)")
    ap.add_argument("--d", type=int, help="inputs of the layer (default n/4)")
    ap.add_argument("--n-out", type=int, help="rows of the next layer (default n/4)")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16", help="of the activations")
    ap.add_argument("--weights-dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fortran", action="store_true", help="activations in Fortran order")
    ap.add_argument("--sparse", action="store_true", help="activations: header only, a sparse file")
    ap.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = ap.parse_args()
    make_layer(args)


def make_layer(args):
    from safetensors.numpy import save_file

    n, m = args.n, args.m
    d = args.d or max(1, n // 4)
    n_out = args.n_out or max(1, n // 4)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    up = (rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
    up_bias = (rng.standard_normal(n, dtype=np.float32) * 0.1 - 0.1).astype(np.float32)
    down = (rng.standard_normal((n_out, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
    down_bias = (rng.standard_normal(n_out, dtype=np.float32) * 0.1).astype(np.float32)
    wdt = np.float16 if args.weights_dtype == "f16" else np.float32
    save_file(
        {
            "up.weight": up.astype(wdt),
            "up.bias": up_bias.astype(wdt),
            "down.weight": down.astype(wdt),
            "down.bias": down_bias.astype(wdt),
        },
        str(args.out / "model.safetensors"),
    )
    del down

    adt = np.dtype("<f2") if args.dtype == "f16" else np.dtype("<f4")
    path = args.out / "activations.npy"
    scales = (1.0 / np.sqrt(1.0 + np.arange(d, dtype=np.float32))).astype(np.float32)
    scales *= np.sqrt(d / np.sum(scales**2))  # E ||x||^2 = d, as for white inputs
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": adt.str, "fortran_order": bool(args.fortran), "shape": (m, n)}
        )
        start = f.tell()
        if args.sparse:
            f.truncate(start + m * n * adt.itemsize)
        else:
            up_t = np.ascontiguousarray(up.T)
            for r0 in range(0, m, CHUNK_ROWS):
                rows = min(CHUNK_ROWS, m - r0)
                x = rng.standard_normal((rows, d), dtype=np.float32) * scales
                a = np.maximum(x @ up_t + up_bias, 0.0).astype(adt)
                if args.fortran:
                    # Column j holds m values: this chunk's rows r0..r0+rows of each column.
                    for j in range(n):
                        f.seek(start + (j * m + r0) * adt.itemsize)
                        f.write(a[:, j].tobytes())
                else:
                    f.write(a.tobytes())
    print(
        f"{args.out}: activations {m} x {n} {args.dtype}{' (sparse)' if args.sparse else ''}, "
        f"up {n} x {d}, down {n_out} x {n} ({time.perf_counter() - t0:.1f} s)"
    )


if __name__ == "__main__":
    main()
