#!/usr/bin/env python3
"""numpy's f64 Gram matrix `A.T @ A` of an m x n npy file: the reference that the statistics
stage of `divnet compress-layer` is compared with.

usage: numpy_gram.py ACTS.npy [--repeat 1]

Prints the time to load and convert the file to float64, and the time of `A.T @ A` itself
(numpy hands `A.T @ A` to BLAS's syrk, one triangle, then mirrors), with the BLAS numpy uses
and its thread count. Run it in the same minutes as the divnet run it is compared with:
on a shared machine the figures move with the load.
"""
import argparse
import os
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("acts")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()

    t = time.perf_counter()
    a = np.load(args.acts, mmap_mode="r")
    a = np.asarray(a, dtype=np.float64)
    load = time.perf_counter() - t
    m, n = a.shape
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    except ImportError:
        blas = f"{os.cpu_count()} CPUs (threadpoolctl not installed)"
    print(f"{args.acts}: {m} x {n}, load + convert to float64 {load:.2f} s; BLAS: {blas}")
    best = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        g = a.T @ a
        secs = time.perf_counter() - t
        best = secs if best is None else min(best, secs)
        print(f"numpy f64 A.T @ A: {secs:.2f} s ({2 * m * n * n / secs / 1e9:.1f} GFLOP/s counting 2 m n^2)")
    del g
    print(f"best {best:.2f} s")


if __name__ == "__main__":
    main()
