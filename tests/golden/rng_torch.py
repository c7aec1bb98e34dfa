#!/usr/bin/env python3
"""Record torch.randn draws for lorahost's torch-compatible RNG test.

Run: ~/ref/bin/python tests/golden/rng_torch.py
Writes tests/fixtures/rng/torch_randn.safetensors: for each case a tensor
named "seed<S>_n<N>[_<k>]" holding torch.randn(N, generator=G) where G was
seeded with S and, for _k suffixes, k earlier draws were taken from the same
generator. Metadata records the torch version.
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
]


def main():
    tensors = {}
    for seed, sizes in CASES:
        g = torch.Generator("cpu").manual_seed(seed)
        for k, n in enumerate(sizes):
            name = f"seed{seed}_n{n}" + (f"_{k}" if len(sizes) > 1 else "")
            tensors[name] = torch.randn(n, generator=g, dtype=torch.float32)
    meta = {"torch": torch.__version__, "generator": "tests/golden/rng_torch.py"}
    save_file(tensors, OUT, metadata=meta)
    print(f"wrote {OUT}: {len(tensors)} tensors, torch {torch.__version__}")


if __name__ == "__main__":
    main()
