#!/usr/bin/env bash
# The reference tool at its best single QP, without running rate control: every QP of the rate
# control grid (-46..-14 around the default -38) through `nnzip compress --no-simplify
# --reference-compatible` (NNCodec's own stream of the original model), keeping the smallest
# bitstream whose metric stays within MAX_DROP points of the original. Same numbers as the
# `best_single_qp_reference` of `compress --compare-single-qp`, which also runs rate control.
# usage: scripts/reference-single-qp.sh MODEL CALIB.npz MAX_DROP [compress options, e.g. --shape]
# prints: qp bytes metric   (or "none" when no QP stays within the budget)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=$1 calib=$2 drop=$3; shift 3
N=${NNZIP:-./target/release/nnzip}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for qp in $(seq -46 -14); do
  $N compress "$model" -o "$out/r.nnc" --no-simplify --reference-compatible --qp "$qp" \
     --calib "$calib" --runs 0 --json -q "$@" |
    python3 -c "import json,sys; d=json.load(sys.stdin); print($qp, d['bitstream_bytes'], d['metric_before'], d['metric_after'])"
done | python3 -c "
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
ok = [(int(b), int(q), float(a)) for q, b, m0, a in rows if float(m0) - float(a) <= $drop]
print('%d %d %.3f' % (min(ok)[1], min(ok)[0], min(ok)[2]) if ok else 'none')"
