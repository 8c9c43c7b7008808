#!/usr/bin/env python3
"""Whether two selection rules' test accuracies, or their fidelity to the full network, really
differ: a paired test per test image.

Compresses the shipped Fashion-MNIST network with `divnet compress` (fusion on, every hidden
layer, the same k per layer) once per selection rule, predicts the 10000 test images with
numpy, and compares the first rule with each of the others by McNemar's exact test: of the
images exactly one of the two networks gets right, how many each gets, and the two-sided
p-value of that split under "both rules are equally good" (a binomial with p = 1/2).
Accuracies a few images apart are noise when that p-value is large. The same test on
agreement with the full network (the image gets the class the full network predicts, right or
wrong) compares how faithfully each rule's network reproduces the original.

    cargo build --release
    python3 scripts/paired_accuracy.py                       # k = 400: fusion-swap against greedy, importance, fusion-greedy
    python3 scripts/paired_accuracy.py -k 100 --select fusion-greedy,greedy

The rules must be deterministic (fusion-swap, fusion-greedy, greedy, importance, quality-greedy) or take
`--seed`. Needs numpy and safetensors (`pip install numpy safetensors`).
"""

import argparse
import gzip
import subprocess
import tempfile
from math import comb
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "fashion-mnist"
MODEL = DATA / "mlp-784-1000-1000-10.safetensors"


def read_idx(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


def predict(model, images, layers=("fc1", "fc2", "fc3")):
    """Per test image: the class the ReLU MLP in `model` predicts."""
    t = load_file(model)
    h = images
    for i, name in enumerate(layers):
        h = h @ t[f"{name}.weight"].astype(np.float32).T + t[f"{name}.bias"].astype(np.float32)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h.argmax(axis=1)


def mcnemar(a, b):
    """Images only `a` gets right, only `b` gets right, and the exact two-sided p-value."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return only_a, only_b, min(1.0, 2 * tail)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", "--keep", type=int, default=400, help="neurons kept per hidden layer")
    p.add_argument("--select", default="fusion-swap,greedy,importance,fusion-greedy",
                   help="rules, comma-separated; the first is compared with each other one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--divnet", default=str(ROOT / "target" / "release" / "divnet"))
    args = p.parse_args()

    images = read_idx(DATA / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    labels = read_idx(DATA / "t10k-labels-idx1-ubyte.gz")
    predictions = {"full network": predict(MODEL, images)}
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.select.split(","):
            out = Path(tmp) / f"{rule}.safetensors"
            subprocess.run(
                [args.divnet, "compress", "--model", str(MODEL),
                 "--calibration", str(DATA / "train-images-first5000-idx3-ubyte.gz"),
                 "--select", rule, "-k", str(args.keep), "--seed", str(args.seed),
                 "--out", str(out)],
                check=True, capture_output=True)
            predictions[rule] = predict(out, images)

    full = predictions["full network"]
    right = {name: p == labels for name, p in predictions.items()}
    agree = {name: p == full for name, p in predictions.items()}
    for name in predictions:
        label = name if name == "full network" else f"{name} + fusion, k = {args.keep}"
        print(f"{label:40} {right[name].mean() * 100:6.2f}% right ({right[name].sum()} of "
              f"{right[name].size}), {agree[name].mean() * 100:6.2f}% as the full network")
    rules = args.select.split(",")
    first = rules[0]
    for other in rules[1:] + ["full network"]:
        only_a, only_b, pv = mcnemar(right[first], right[other])
        print(f"{first} vs {other}: right only with {first} {only_a}, only with {other} "
              f"{only_b}; McNemar exact p = {pv:.2g}")
    for other in rules[1:]:
        only_a, only_b, pv = mcnemar(agree[first], agree[other])
        print(f"{first} vs {other}: as the full network only with {first} {only_a}, only with "
              f"{other} {only_b}; McNemar exact p = {pv:.2g}")


if __name__ == "__main__":
    main()
