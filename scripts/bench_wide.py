#!/usr/bin/env python3
"""Issue 12's wide-layer targets: `divnet compress-layer --select kdpp` (or the methods
--select names, e.g. greedy) plus fusion on the synthetic ReLU layer of
scripts/make_layer.py (f16 activations read from an npy file), with wall time and peak RSS from /usr/bin/time -v, the route, stage times and planned peak from
divnet's report, and optionally numpy's eigh on an n x n kernel of the same n.

    cargo build --release
    python3 scripts/bench_wide.py                              # n = 8192, m = 32768, k = 2048
    python3 scripts/bench_wide.py --rows 16384:32768:4096,32768:65536:8192
    python3 scripts/bench_wide.py --rows 32768:65536:8192 --dry-run   # the plan only
    python3 scripts/bench_wide.py --rows 32768:65536:8192 --select greedy --routes two-pass

Each row is N:M:K. The layer's files go to --work (default /tmp/divnet-wide), one folder
per shape, kept between runs (delete them when done: n = 32768, m = 65536 is 4.3 GB of
activations). --dry-run writes the activations as a sparse file (header only, no disk
used) and runs `compress-layer --dry-run`, which prints the route and the memory plan:
what each stage holds and the predicted peak, checked against the free memory.

--eigh times numpy.linalg.eigh (float64) on the RBF kernel (beta = 10/m) of a random 4096
rows of the activations: the reference of the n = 8192 row ("below numpy's eigh alone").
It needs about 3 n x n float64 matrices: do not ask for it at n = 32768 on a 24 GB machine.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def parse_rows(text):
    rows = []
    for item in text.split(","):
        n, m, k = (int(v) for v in item.split(":"))
        rows.append((n, m, k))
    return rows


def make(folder, n, m, n_out, sparse):
    """The layer's files in `folder`, made unless there (a sparse file only for a dry run)."""
    complete, header_only = folder / "complete", folder / "sparse"
    if complete.exists() or (sparse and header_only.exists()):
        return
    cmd = [sys.executable, str(ROOT / "scripts" / "make_layer.py"), "--n", str(n), "--m", str(m),
           "--n-out", str(n_out), "--out", str(folder)]
    subprocess.run(cmd + (["--sparse"] if sparse else []), check=True)
    header_only.unlink(missing_ok=True)
    (header_only if sparse else complete).write_text("")


def time_v(stderr):
    """Wall seconds and peak RSS bytes from /usr/bin/time -v's report."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    secs = None
    if wall:
        secs = 0.0
        for part in wall.group(1).split(":"):
            secs = secs * 60 + float(part)
    return secs, int(rss.group(1)) * 1024 if rss else None


def compress(divnet, folder, k, select, route, backend, dry_run):
    cmd = [divnet, "compress-layer", "--activations", str(folder / "activations.npy"),
           "--weights", str(folder / "model.safetensors"), "--next", "down", "--prev", "up",
           "--select", select, "-k", str(k), "--route", route, "--backend", backend]
    if dry_run:
        out = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr if out.returncode else "")
        return None
    report = folder / f"report-{select}-{route}.json"
    cmd += ["--out", str(folder / "out.safetensors"), "--report", str(report)]
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"divnet failed on {folder}")
    wall, rss = time_v(out.stderr)
    r = json.loads(report.read_text())
    (folder / "out.safetensors").unlink(missing_ok=True)
    return {"wall": wall, "rss": rss, "report": r}


def numpy_eigh(folder, n, m, sample_rows=4096, seed=0):
    a = np.load(folder / "activations.npy", mmap_mode="r")
    rows = np.sort(np.random.default_rng(seed).choice(m, size=min(sample_rows, m), replace=False))
    x = np.asarray(a[rows], dtype=np.float64)
    sq = np.einsum("ij,ij->j", x, x)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x.T @ x), 0.0)
    del x
    kernel = np.exp(-(10.0 / len(rows)) * d)
    del d
    kernel[np.diag_indices(n)] += 1e-6
    t0 = time.perf_counter()
    np.linalg.eigh(kernel)
    return time.perf_counter() - t0


def gib(b):
    return "-" if b is None else f"{b / 2**30:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="8192:32768:2048", help="N:M:K[,N:M:K...]")
    ap.add_argument("--n-out", type=int, help="rows of the next layer (default n/4)")
    ap.add_argument("--routes", default="auto", help="auto, one-pass, two-pass (comma-separated)")
    ap.add_argument("--select", default="kdpp",
                    help="selection methods (comma-separated), each with fusion: kdpp, greedy, ...")
    ap.add_argument("--backend", default="auto", help="auto, cpu or gpu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/divnet-wide"))
    ap.add_argument("--divnet", default=str(ROOT / "target" / "release" / "divnet"))
    ap.add_argument("--dry-run", action="store_true", help="print the plans, run nothing")
    ap.add_argument("--eigh", action="store_true", help="time numpy's eigh at each n too")
    args = ap.parse_args()

    table = []
    for n, m, k in parse_rows(args.rows):
        n_out = args.n_out or n // 4
        folder = args.work / f"n{n}_m{m}_o{n_out}"
        make(folder, n, m, n_out, args.dry_run)
        for select, route in [(s, r) for s in args.select.split(",") for r in args.routes.split(",")]:
            print(f"== n = {n}, m = {m}, k = {k}, n_out = {n_out}, {select}, route {route}",
                  flush=True)
            res = compress(args.divnet, folder, k, select, route, args.backend, args.dry_run)
            if res is None:
                continue
            r = res["report"]
            stages = ", ".join(f"{s} {t:.1f}" for s, t in r["seconds"])
            plan = r["plan"]
            predicted = None
            if plan.get("rss_at_plan") is not None:
                predicted = plan["rss_at_plan"] + max(
                    sum(a["bytes"] for a in st["holds"]) for st in plan["memory"]["stages"])
            row = dict(n=n, m=m, k=k, n_out=n_out, select=select, route=r["route"], wall=res["wall"],
                       rss=res["rss"], predicted=predicted, stages=stages,
                       error=r["relative_error"])
            print(json.dumps(row), flush=True)
            table.append(row)
        if args.eigh and not args.dry_run:
            secs = numpy_eigh(folder, n, m)
            print(f"numpy eigh, n = {n}: {secs:.1f} s", flush=True)
            for row in table:
                if row["n"] == n:
                    row["eigh"] = secs
    if table:
        print("\n| n | m | k | n_out | select | route | wall time (s) | peak RSS (GiB) "
              "| predicted peak (GiB) | numpy eigh (s) | next-layer error | stages (s) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in table:
            eigh = f"{r['eigh']:.1f}" if "eigh" in r else "-"
            print(f"| {r['n']} | {r['m']} | {r['k']} | {r['n_out']} | {r['select']} | {r['route']} | "
                  f"{r['wall']:.1f} | {gib(r['rss'])} | {gib(r['predicted'])} | {eigh} | "
                  f"{r['error']:.4f} | {r['stages']} |")


if __name__ == "__main__":
    main()
