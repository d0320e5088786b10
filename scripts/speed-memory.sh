#!/usr/bin/env bash
# Speed and memory of the plain job (docs/benchmarks.md, "Speed and memory of compress and
# decompress"), measured side by side in one run.
#
# 1. MiniLM-L3, ROUNDS rounds, each: the reference NNCodec 2.1.3 `nnc.compress` of the model's
#    float weights alone (scripts in ../shared/tools; its own timer around the call, and wall
#    time of the whole script), then `nnzip compress` of the whole model (defaults, with and
#    without the latency columns), then `nnzip decompress`. Wall time and peak RSS from
#    /usr/bin/time.
# 2. Every real model once: `nnzip compress` (defaults, --runs 0) and `nnzip decompress`, wall
#    time and peak RSS as a multiple of the ONNX file.
# usage: scripts/speed-memory.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${NNZIP:-./target/release/nnzip}
R=${NNZIP_REAL_MODELS:-$HOME/.cache/nnzip-real-models}
PY=${PY:-$HOME/.cache/nncodec-venv/bin/python}
TOOLS=${NNC_TOOLS:-../shared/tools}
[ -d "$TOOLS" ] || TOOLS=/work/shared/tools
W=${BENCH_DIR:-target/bench/speed}
rounds=${1:-3}
mkdir -p "$W"
[ -x "$N" ] || cargo build --release --locked -q --bin nnzip

# No --shape: the default job plans the sizes of symbolic inputs itself.

t() { # file cmd...: "seconds peak_kb" of cmd into file, its stdout discarded
  local f=$1; shift
  /usr/bin/time -f "%e %M" -o "$f" "$@" > /dev/null 2>&1
}

m=$R/minilm_l3.onnx
"$PY" - "$m" "$W/minilm_weights.npz" <<'EOF'
# The float weights the reference is given: every float initializer of 16 values or more.
import sys, numpy as np, onnx
from onnx import numpy_helper
g = onnx.load(sys.argv[1]).graph
d = {t.name: numpy_helper.to_array(t) for t in g.initializer}
np.savez(sys.argv[2], **{k: v for k, v in d.items() if v.dtype == np.float32 and v.size >= 16})
EOF
echo "## MiniLM-L3 ($(stat -c %s "$m") bytes), $rounds rounds"
echo
echo "| round | reference nnc.compress of the weights: s (in-call s) | nnzip compress, whole model, --runs 0: s, peak MB | nnzip compress with latency columns: s, peak MB | nnzip decompress: s, peak MB |"
echo "|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  ref=$( { /usr/bin/time -f "%e" "$PY" "$TOOLS/nncodec_encode.py" "$W/minilm_weights.npz" "$W/ref.nnc"; } 2>&1 | tr '\n' ' ')
  t "$W/c0" $N compress "$m" -o "$W/m.nnc" --runs 0 -q
  t "$W/c1" $N compress "$m" -o "$W/m.nnc" -q
  t "$W/d" $N decompress "$W/m.nnc" -o "$W/m.onnx"
  python3 - "$r" "$ref" "$W/c0" "$W/c1" "$W/d" <<'EOF'
import re, sys
r, ref, *files = sys.argv[1:]
inner = re.search(r"in ([0-9.]+) s", ref).group(1)
wall = ref.split()[-1]
cells = []
for f in files:
    s, kb = open(f).read().split()
    cells.append(f"{s}, {int(kb) / 1024:.0f}")
print(f"| {r} | {wall} ({inner}) | " + " | ".join(cells) + " |")
EOF
done
echo
echo "## Every real model: nnzip compress (defaults, --runs 0) and decompress"
echo
echo "| model | ONNX MB | compress s | compress peak MB (x ONNX) | decompress s | decompress peak MB (x ONNX) |"
echo "|---|---|---|---|---|---|"
for name in orientation_lcnet ppocr_cls ppocr_det ppocr_rec silero_ifless silero_vad_if minilm_l3 magika; do
  f=$R/$name.onnx
  [ -f "$f" ] || continue
  t "$W/c" $N compress "$f" -o "$W/$name.nnc" --runs 0 -q
  t "$W/d" $N decompress "$W/$name.nnc" -o "$W/$name.onnx"
  python3 - "$name" "$(stat -c %s "$f")" "$W/c" "$W/d" <<'EOF'
import sys
name, size, c, d = sys.argv[1:]
size = int(size)
def cell(f):
    s, kb = open(f).read().split()
    kb = int(kb)
    return f"{s} | {kb / 1024:.0f} ({kb * 1024 / size:.1f})"
print(f"| {name} | {size / 1e6:.1f} | {cell(c)} | {cell(d)} |")
EOF
done
