#!/usr/bin/env python3
"""Times the reference NNCodec on one .npz, encode and decode in the same process, for the
side-by-side throughput table in docs/benchmarks.md (run with the python of setup-nncodec.sh):
    python scripts/reference-speed.py MODEL.npz [--runs 3] [--bitstream OUT.nnc]
Prints the best of RUNS for each direction, in weights per second, and the bitstream size;
--bitstream also writes the reference's stream (to compare bytes with ours)."""
import argparse, contextlib, io, time
import numpy as np
from nncodec import nnc

p = argparse.ArgumentParser()
p.add_argument("src")
p.add_argument("--runs", type=int, default=3)
p.add_argument("--bitstream")
a = p.parse_args()
z = np.load(a.src)
params = {k: z[k].astype(np.float32) for k in z.files}
n = sum(v.size for v in params.values())
enc, dec = [], []
for _ in range(a.runs):
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        bs = nnc.compress(params, bitstream_path=None, return_bitstream=True)
    enc.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        nnc.decompress(bytearray(bs))
    dec.append(time.perf_counter() - t0)
if a.bitstream:
    with open(a.bitstream, "wb") as f:
        f.write(bs)
e, d = min(enc), min(dec)
print(f"{n} weights, {len(bs)} bytes ({len(bs) * 8 / n:.3f} bits/weight); "
      f"encode {e:.2f} s ({n / e / 1e6:.2f} M/s); decode {d:.3f} s ({n / d / 1e6:.2f} M/s)")
