"""Writes test/data/torch-randn.json: torch.randn / torch.rand values that
src/engine/random/torch.test.ts checks TorchGenerator against, bit for bit.

How to run (from the repository root), with Debian's torch 1.13 on x86-64 with AVX2:
    apt-get install -y python3-torch
    /usr/bin/python3 test/data/make-torch-randn.py

torch's float32 randn for 16 or more elements depends on the CPU kernel it
dispatches to; TorchGenerator reproduces the AVX2 one, so this script refuses to
run under any other capability (set ATEN_CPU_CAPABILITY=avx2 if it is not the
default). Values are written with repr(float(v)), which round-trips exactly.
"""
import json
import os
import re

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch-randn.json")
SEEDS = [0, 1, 42, 12345]
SHAPES = [[1], [3], [15], [16], [17], [31], [32], [100], [2, 1, 4, 4], [1, 4, 8, 8]]


def values(t):
    return [float(v) for v in t.flatten().tolist()]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def main():
    cap = re.search(r"CPU capability usage: (.+)", torch.__config__.show())
    cap = cap.group(1).strip() if cap else "unknown"
    if cap != "AVX2":
        raise SystemExit(f"CPU capability is {cap}, expected AVX2 (see the header)")

    randn = [
        {"seed": s, "shape": shape, "values": values(torch.randn(shape, generator=gen(s)))}
        for s in SEEDS
        for shape in SHAPES
    ]

    # Successive calls on one generator: the MT stream and the cached scalar normal carry over.
    sequences = []
    for seed, calls in [
        (0, [("randn", [3]), ("randn", [5]), ("rand", [4])]),
        (42, [("randn", [3]), ("randn", [2, 1, 4, 4]), ("randn", [1]), ("rand", [17])]),
    ]:
        g = gen(seed)
        out = []
        for op, shape in calls:
            fn = torch.randn if op == "randn" else torch.rand
            out.append({"op": op, "shape": shape, "values": values(fn(shape, generator=g))})
        sequences.append({"seed": seed, "calls": out})

    # Large draws: first and last 64 values and the left-to-right float64 sum of all of them.
    large = []
    for seed in [0, 12345]:
        v = values(torch.randn([4096], generator=gen(seed)))
        total = 0.0
        for x in v:
            total += x
        large.append({"seed": seed, "shape": [4096], "first": v[:64], "last": v[-64:],
                      "sum": total})

    doc = {
        "generatedBy": "test/data/make-torch-randn.py",
        "torch": torch.__version__,
        "cpuCapability": cap,
        "randn": randn,
        "sequences": sequences,
        "large": large,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
