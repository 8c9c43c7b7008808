#!/usr/bin/env python3
"""Reference timings for benches/dpp.rs: numpy.linalg.eigh and DPPy's sample_exact_k_dpp on
the very kernels the Rust bench wrote (target/dpp-bench/rbf_<n>.npy), and the ratios to
the Rust figures when criterion's results are present (target/criterion/dpp/...) or, for
sizes the bench times once (n > 4096), target/dpp-bench/once_<n>.json.

    cargo bench --bench dpp          # writes the kernels and the Rust timings
    pip install numpy dppy           # DPPy is optional: its columns stay empty without it
    python3 scripts/bench_dpp.py     # [--sizes 1000,2000,4000] [--repeats 3]

The second table compares a whole k-DPP draw at k = n / 4 from the full eigendecomposition
(eigendecomposition + sample) and from the partial one (reduction and eigenvalues + the
draw's k eigenvectors and sample) with numpy's `eigh` alone. Run it right after the bench:
the machine's speed drifts, and the figures only compare when taken in the same minutes.

Then, unless --no-overflow-check: a k-DPP does not change when L is scaled, so samples from
L and from 100 L must agree in distribution. At n = 2000, k = 200 the plain ESP recursion
(DPPy's) overflows for 100 L; the check compares the mean log det(L_Y) of samples from both
kernels, for DPPy and for `divnet sample` (target/release/divnet, `cargo build --release`).
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


def rust_once(n):
    """The one-shot timings benches/dpp.rs writes for large n, or None."""
    path = ROOT / "target" / "dpp-bench" / f"once_{n}.json"
    return json.loads(path.read_text()) if path.exists() else None


def draw_seconds(n):
    """(full draw, partial draw, later partial draw) at k = n / 4, seconds, or Nones."""
    once = rust_once(n)
    if once is not None:
        return (once["eigendecomposition"] + once["full_sample"],
                once["partial_spectrum"] + once["partial_draw"], once["partial_later_draw"])
    parts = [rust_seconds(name, n) for name in
             ("eigendecomposition", "k_dpp_full_sample_n4", "partial_spectrum", "k_dpp_partial_draw_n4")]
    full = None if None in parts[:2] else parts[0] + parts[1]
    partial = None if None in parts[2:] else parts[2] + parts[3]
    return full, partial, parts[3]


def fmt(s):
    return "      -" if s is None else f"{s:9.4f}"


def ratio(slow, fast):
    return "       -" if slow is None or fast is None else f"{slow / fast:7.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,2000,4000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-overflow-check", action="store_true")
    ap.add_argument("--samples", type=int, default=40, help="samples per kernel in the overflow check")
    args = ap.parse_args()

    try:
        from dppy.finite_dpps import FiniteDPP
        from dppy.exact_sampling import elementary_symmetric_polynomials
    except ImportError:
        FiniteDPP = None
        print("DPPy is not installed: its columns stay empty and the overflow check is skipped")

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        path = ROOT / "target" / "dpp-bench" / f"rbf_{n}.npy"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `cargo bench --bench dpp` first")
        L = np.load(path)
        k = n // 10
        t_eigh, (vals, vecs) = best_of(max(1, args.repeats if n < 4000 else 1), lambda: np.linalg.eigh(L))
        t_dppy, overflow, valid = None, False, True
        if FiniteDPP is not None:
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

    print(f"{'n':>5} {'k':>4} | {'numpy eigh':>9} {'divnet':>9} {'ratio':>8} | "
          f"{'DPPy k-DPP':>9} {'1st':>9} {'ratio':>8} {'later':>9} {'ratio':>8} | "
          f"{'greedy':>9} | DPPy ESP")
    for n, k, t_eigh, t_dppy, overflow, valid in rows:
        r_eig = rust_seconds("eigendecomposition", n) or (rust_once(n) or {}).get("eigendecomposition")
        r_first = rust_seconds("k_dpp_first_sample", n)
        r_later = rust_seconds("k_dpp_later_sample", n)
        r_greedy = rust_seconds("greedy_map", n)
        note = "-" if t_dppy is None else "OVERFLOWS (samples wrong)" if overflow else "finite"
        if not valid:
            note += ", invalid sample"
        print(f"{n:5d} {k:4d} | {fmt(t_eigh)} {fmt(r_eig)} {ratio(t_eigh, r_eig)} | "
              f"{fmt(t_dppy)} {fmt(r_first)} {ratio(t_dppy, r_first)} {fmt(r_later)} "
              f"{ratio(t_dppy, r_later)} | {fmt(r_greedy)} | {note}")
    print("seconds; ratio = Python time / Rust time (higher means Rust is faster)")

    print(f"\nk-DPP draw at k = n / 4: full eigendecomposition vs partial (reduction, eigenvalues, k eigenvectors)")
    print(f"{'n':>5} {'k':>4} | {'numpy eigh':>9} | {'full draw':>9} {'ratio':>8} | "
          f"{'partial':>9} {'ratio':>8} | {'later':>9}")
    for n, _, t_eigh, _, _, _ in rows:
        full, partial, later = draw_seconds(n)
        print(f"{n:5d} {n // 4:4d} | {fmt(t_eigh)} | {fmt(full)} {ratio(t_eigh, full)} | "
              f"{fmt(partial)} {ratio(t_eigh, partial)} | {fmt(later)}")
    print("seconds; ratio = numpy eigh alone / the Rust draw; later = a further partial draw")
    if not args.no_overflow_check and FiniteDPP is not None:
        overflow_check(args.samples)


def overflow_check(samples, n=2000, scale=100.0):
    """Mean log det(L_Y) of k-DPP samples from L and from scale * L (the same k-DPP)."""
    import subprocess
    from dppy.finite_dpps import FiniteDPP
    from dppy.exact_sampling import elementary_symmetric_polynomials

    path = ROOT / "target" / "dpp-bench" / f"rbf_{n}.npy"
    divnet = ROOT / "target" / "release" / "divnet"
    if not path.exists():
        print(f"overflow check skipped: {path} is missing")
        return
    L = np.load(path)
    k = n // 10
    scaled_path = path.with_name(f"rbf_{n}_x{scale:g}.npy")
    np.save(scaled_path, scale * L)

    def logdet(y):
        sign, value = np.linalg.slogdet(L[np.ix_(y, y)])
        return value if sign > 0 else float("-inf")

    def dppy_samples(kernel):
        vals, vecs = np.linalg.eigh(kernel)
        vals = np.clip(vals, 0.0, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finite = bool(np.all(np.isfinite(elementary_symmetric_polynomials(vals, k))))
            dpp = FiniteDPP("likelihood", L_eig_dec=(vals, vecs))
            rng = np.random.RandomState(1)
            ys = [list(dpp.sample_exact_k_dpp(size=k, mode="GS", random_state=rng)) for _ in range(samples)]
        return ys, finite

    def divnet_samples(kernel_path):
        out = subprocess.run(
            [str(divnet), "sample", "--kernel", str(kernel_path), "-k", str(k),
             "--samples", str(samples), "--seed", "1"],
            check=True, capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def summary(ys):
        v = np.array([logdet(y) for y in ys])
        return f"{v.mean():9.1f} +- {v.std(ddof=1) / np.sqrt(len(v)):5.1f}"

    print(f"\nscale invariance (n = {n}, k = {k}, {samples} samples each): mean log det(L_Y)")
    for name, kernel in [("L", L), (f"{scale:g} L", scale * L)]:
        ys, finite = dppy_samples(kernel)
        print(f"  DPPy   from {name:>5}: {summary(ys)}   (ESP {'finite' if finite else 'OVERFLOWS'})")
    if divnet.exists():
        for name, kp in [("L", path), (f"{scale:g} L", scaled_path)]:
            print(f"  divnet from {name:>5}: {summary(divnet_samples(kp))}")
    else:
        print(f"  divnet: {divnet} is missing (cargo build --release)")


if __name__ == "__main__":
    main()
