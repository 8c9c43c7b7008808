#!/usr/bin/env python3
"""Reference timings for benches/dpp.rs: numpy.linalg.eigh and DPPy's sample_exact_k_dpp on
the very kernels the Rust bench wrote (target/dpp-bench/rbf_<n>.npy), and the ratios to
the Rust figures when criterion's results are present (target/criterion/dpp/...).

    cargo bench --bench dpp          # writes the kernels and the Rust timings
    pip install numpy dppy
    python3 scripts/bench_dpp.py     # [--sizes 1000,2000,4000] [--repeats 3]
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def best_of(repeats, fn):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def rust_seconds(name, n):
    """Criterion's mean for dpp/<name>/<n>, in seconds, or None."""
    path = ROOT / "target" / "criterion" / "dpp" / name / str(n) / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["mean"]["point_estimate"] * 1e-9


def fmt(s):
    return "      -" if s is None else f"{s:9.4f}"


def ratio(slow, fast):
    return "     -" if slow is None or fast is None else f"{slow / fast:6.1f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,2000,4000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from dppy.finite_dpps import FiniteDPP
    from dppy.exact_sampling import elementary_symmetric_polynomials

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        path = ROOT / "target" / "dpp-bench" / f"rbf_{n}.npy"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `cargo bench --bench dpp` first")
        L = np.load(path)
        k = n // 10
        t_eigh, (vals, vecs) = best_of(max(1, args.repeats if n < 4000 else 1), lambda: np.linalg.eigh(L))
        vals = np.clip(vals, 0.0, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            E = elementary_symmetric_polynomials(vals, k)
        overflow = not np.all(np.isfinite(E))
        dpp = FiniteDPP("likelihood", L_eig_dec=(vals, vecs))
        rng = np.random.RandomState(0)

        def draw():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return dpp.sample_exact_k_dpp(size=k, mode="GS", random_state=rng)

        t_dppy, y = best_of(args.repeats, draw)
        valid = len(y) == k and len(set(int(i) for i in y)) == k
        rows.append((n, k, t_eigh, t_dppy, overflow, valid))

    print(f"{'n':>5} {'k':>4} | {'numpy eigh':>9} {'faer':>9} {'ratio':>7} | "
          f"{'DPPy k-DPP':>9} {'1st':>9} {'ratio':>7} {'later':>9} {'ratio':>7} | "
          f"{'greedy':>9} | DPPy ESP")
    for n, k, t_eigh, t_dppy, overflow, valid in rows:
        r_eig = rust_seconds("eigendecomposition", n)
        r_first = rust_seconds("k_dpp_first_sample", n)
        r_later = rust_seconds("k_dpp_later_sample", n)
        r_greedy = rust_seconds("greedy_map", n)
        note = "OVERFLOWS (samples wrong)" if overflow else "finite"
        if not valid:
            note += ", invalid sample"
        print(f"{n:5d} {k:4d} | {fmt(t_eigh)} {fmt(r_eig)} {ratio(t_eigh, r_eig)} | "
              f"{fmt(t_dppy)} {fmt(r_first)} {ratio(t_dppy, r_first)} {fmt(r_later)} "
              f"{ratio(t_dppy, r_later)} | {fmt(r_greedy)} | {note}")
    print("seconds; ratio = Python time / Rust time (higher means Rust is faster)")


if __name__ == "__main__":
    main()
