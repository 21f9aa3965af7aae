"""Expected values for diffusion/diffusers/numerics.ts and sleef.ts (torch_numerics.json).

torch 1.13.1 (Debian bookworm python3-torch, reference BLAS / LAPACK, CPU capability AVX2),
float32: exp / log / expm1 on inputs where SLEEF's result is not the correctly rounded one
(plus some where it is), torch.linspace for several (start, end, steps), and torch.linalg.solve
on UniPC-shaped Vandermonde systems, contiguous (2x2, 3x3) and as a non-contiguous slice.

    /usr/bin/python3 generate_torch_numerics.py
"""
import json, math, os
import numpy as np
import torch

torch.set_num_threads(1)
rng = np.random.default_rng(2024)
out = {"meta": {"producer": f"torch {torch.__version__}, numpy {np.__version__}, CPU float32"}}

def f32(v):
    return float(np.float32(v))

def pick(name, xs, fn, ref):
    got = fn(torch.from_numpy(xs)).numpy()
    cr = np.array([np.float32(ref(float(v))) for v in xs])
    diff = np.nonzero(got != cr)[0][:150]
    same = np.nonzero(got == cr)[0][:50]
    idx = np.concatenate([diff, same])
    out[name] = {"in": [float(v) for v in xs[idx]], "out": [float(v) for v in got[idx]], "not_correctly_rounded": int(len(diff))}

pick("exp", rng.uniform(-30, 30, 20000).astype(np.float32), torch.exp, math.exp)
pick("expm1", rng.uniform(-20, 20, 20000).astype(np.float32), torch.expm1, math.expm1)
pick("log", np.exp(rng.uniform(-40, 40, 20000)).astype(np.float32), torch.log, math.log)

out["linspace"] = []
for start, end, steps in [(0.0001, 0.02, 1000), (0.00085 ** 0.5, 0.012 ** 0.5, 1000), (1.3, -2.7, 123), (-6.0, 6.0, 37), (0.0, 1.0, 2)]:
    out["linspace"].append({"start": start, "end": end, "steps": steps,
                            "out": [float(v) for v in torch.linspace(start, end, steps, dtype=torch.float32).numpy()]})

out["solve"] = []
g = torch.Generator().manual_seed(3)
for _ in range(100):
    r1, r2 = (-float(rng.uniform(0.3, 3.0)) for _ in range(2))
    rks = torch.tensor([r1, r2, 1.0], dtype=torch.float32)
    R = torch.stack([torch.pow(rks, i) for i in range(3)])
    b = torch.randn(3, generator=g)
    for name, A, rhs in [("full3", R, b), ("slice2", R[:-1, :-1], b[:-1]), ("full2", R[1:, 1:].contiguous(), b[:-1])]:
        x = torch.linalg.solve(A, rhs)
        out["solve"].append({"kind": name, "contiguous": bool(A.is_contiguous()), "A": A.tolist(), "b": rhs.tolist(), "x": x.tolist()})

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_numerics.json"), "w") as fh:
    json.dump(out, fh, separators=(",", ":"), allow_nan=False)
