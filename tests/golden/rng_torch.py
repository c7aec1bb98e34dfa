#!/usr/bin/env python3
"""Record torch.randn draws for lorahost's torch-compatible RNG test.

Run: ~/ref/bin/python tests/golden/rng_torch.py
Writes tests/fixtures/rng/torch_randn.safetensors: for each case a tensor
named "seed<S>_n<N>[_<k>]" holding torch.randn(N, generator=G) where G was
seeded with S and, for _k suffixes, k earlier draws were taken from the same
generator. Draws too large to store whole (HASHED) are recorded as the 64-bit
FNV-1a hash of their float32 little-endian bytes, in metadata
"fnv1a64:seed<S>_n<N>" (16 hex digits). Metadata "cases" lists every stored
case as "S:N[,N...]" separated by ";", "hashed" lists hashed ones as "S:N", so
tests/test_rng.c can replay them all; "torch" and "cpu_capability" record
where the fixture came from.

torch's float32 kernel for 16+ values depends on the CPU: AVX2 and AVX-512
machines run the avx_mathfun.h kernel that host/rng.c reproduces bit for bit;
the DEFAULT (pre-AVX2 or ATEN_CPU_CAPABILITY=default) build uses libm and
differs in the last bits. This script refuses to record on anything else.
"""
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "rng", "torch_randn.safetensors")

CASES = [  # (seed, [sizes drawn in order from one generator])
    (0, [1]),
    (0, [5]),
    (42, [15]),
    (42, [16]),
    (42, [17]),
    (1234, [33]),
    (7, [4 * 8 * 8]),
    (2**40 + 7, [100]),
    (3, [3, 3, 20, 1]),  # cached Box-Muller pair carried across calls
    (99, [2 * 4 * 64 * 64]),  # an SD 1.5 latent batch at 512x512
    # below 16: double Box-Muller with the cached second value
    (1, [1, 2, 7, 15]),
    (2024, [2, 13, 14]),
    (2**32 + 5, [9]),  # manual_seed keeps the low 32 bits for mt19937
    (11, [1, 16, 1, 2, 15, 3]),  # the cache survives a 16+ draw
    (5, [15, 1, 4]),
    # 282286: uniform 55 is exactly 0, so u1 = 1, log = +0, radius = -0 and
    # torch's fma(n, 1, 0) gives +0 (a plain product would give -0)
    (282286, [64]),
]
# 16+: the AVX2 Box-Muller kernel, full blocks and the redrawn tail
for _seed in (1, 2024, 2**31 - 1, 2**63 + 3, 31337):
    CASES.append((_seed, [16, 17, 31, 32, 47, 100, 257, 1000, 4099]))

HASHED = [(5, 100000), (2**40 + 7, 100003), (77, 65536 + 15)]


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        raise SystemExit(f"cpu capability {cap}: record on an AVX2/AVX-512 machine")
    tensors = {}
    for seed, sizes in CASES:
        g = torch.Generator("cpu").manual_seed(seed)
        for k, n in enumerate(sizes):
            name = f"seed{seed}_n{n}" + (f"_{k}" if len(sizes) > 1 else "")
            assert name not in tensors, name
            tensors[name] = torch.randn(n, generator=g, dtype=torch.float32)
    meta = {
        "torch": torch.__version__,
        "cpu_capability": cap,
        "generator": "tests/golden/rng_torch.py",
        "cases": ";".join(f"{s}:" + ",".join(str(n) for n in sizes) for s, sizes in CASES),
        "hashed": ";".join(f"{s}:{n}" for s, n in HASHED),
    }
    for seed, n in HASHED:
        g = torch.Generator("cpu").manual_seed(seed)
        data = torch.randn(n, generator=g, dtype=torch.float32).numpy().astype("<f4").tobytes()
        meta[f"fnv1a64:seed{seed}_n{n}"] = f"{fnv1a64(data):016x}"
    save_file(tensors, OUT, metadata=meta)
    total = sum(t.numel() for t in tensors.values())
    print(f"wrote {OUT}: {len(tensors)} tensors ({total} values), "
          f"{len(HASHED)} hashed draws, torch {torch.__version__}, {cap}")


if __name__ == "__main__":
    main()
