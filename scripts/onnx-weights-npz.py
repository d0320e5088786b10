#!/usr/bin/env python3
"""Writes the float tensors (initializers, external data included) of an ONNX model to an .npz,
in graph order, as the codec's side-by-side benchmark input (scripts/codec-speed-rounds.sh).
Needs the `onnx` package (the reference's venv of setup-nncodec.sh has it):
    python scripts/onnx-weights-npz.py MODEL.onnx OUT.npz"""
import sys
import numpy as np
import onnx
from onnx import numpy_helper

model = onnx.load(sys.argv[1])
out = {}
for t in model.graph.initializer:
    a = numpy_helper.to_array(t)
    if a.dtype == np.float32 and a.size > 0:
        out[t.name] = a
np.savez(sys.argv[2], **out)
n = sum(a.size for a in out.values())
print(f"{len(out)} float tensors, {n} values -> {sys.argv[2]}")
