#!/usr/bin/env bash
# The codec's side-by-side throughput table (docs/benchmarks.md §3): ROUNDS rounds, each timing
# ours (best of three runs) and then the reference NNCodec (best of two, scripts/reference-speed.py)
# on the same files: the ResNet-18-sized synthetic model of `nnc_speed` and one 1024x2048
# Laplacian matrix. Needs the reference environment of ../shared/tools/setup-nncodec.sh.
# usage: scripts/codec-speed-rounds.sh [ROUNDS]   (env NNCODEC_PY: its python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-4}
py=${NNCODEC_PY:-$HOME/.cache/nncodec-venv/bin/python}
[ -x "$py" ] || { echo "no reference python at $py (run setup-nncodec.sh or set NNCODEC_PY)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -q --release -p nnc-codec --examples
ex=target/release/examples
$ex/nnc_speed "$work/r18.npz" >/dev/null
"$py" -c "
import numpy as np
w = np.random.default_rng(1).laplace(0.0, 0.01, (1024, 2048)).astype(np.float32)
np.savez('$work/lap2m.npz', weight=w)"
best() { sort -g | head -1; }
secs() { sed -E "s/.*$1 ([0-9.]+) s.*/\1/"; }
for r in $(seq "$rounds"); do
  echo "== round $r $(date +%T), load $(cut -d' ' -f1 /proc/loadavg)"
  e=$(for i in 1 2 3; do $ex/nnc_speed; done)
  f=$(for i in 1 2 3; do $ex/nnc_speed 0 2000; done)
  echo "ours  r18: encode $(echo "$e" | secs encode | best) s, fast $(echo "$f" | secs encode | best) s, decode $(echo "$e" | secs decode | best) s"
  le=$(for i in 1 2 3; do $ex/nnc_encode "$work/lap2m.npz" "$work/l.nnc"; done | secs in | best)
  lf=$(for i in 1 2 3; do $ex/nnc_encode "$work/lap2m.npz" "$work/f.nnc" --fast; done | secs in | best)
  ld=$(for i in 1 2 3; do $ex/nnc_decode "$work/l.nnc" "$work/d.npz"; done | secs in | best)
  echo "ours  lap2m: encode $le s, fast $lf s, decode $ld s"
  echo "ref   r18: $("$py" scripts/reference-speed.py "$work/r18.npz" --runs 2 2>/dev/null)"
  echo "ref   lap2m: $("$py" scripts/reference-speed.py "$work/lap2m.npz" --runs 2 2>/dev/null)"
done
