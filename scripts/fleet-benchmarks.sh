#!/usr/bin/env bash
# Fleet throughput of `nnzip batch run` with --jobs 1 and --jobs 2 side by side (docs/benchmarks.md):
# the six committed fixture models, each COPIES times under its own id (every item is real work:
# records are per id), compressed with `runs = 0` (no latency timing, which --jobs would disturb).
# The two settings alternate ROUNDS times into fresh output folders; prints one line per run and
# the medians.
#   bash scripts/fleet-benchmarks.sh [NNZIP] [COPIES] [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nnzip=${1:-$root/target/release/nnzip}
copies=${2:-4}
rounds=${3:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for k in $(seq 1 "$copies"); do
  for m in cnn mlp mobilenet resnet transformer dynamic_attention; do
    shape=""
    [ "$m" = dynamic_attention ] && shape=', "shape": {"input": [1, 8, 32], "mask": [1, 1, 1, 8]}'
    echo "{\"id\": \"$m-$k\", \"model\": \"$root/fixtures/$m.onnx\", \"options\": {\"runs\": 0$shape}}"
  done
done > "$work/fleet.jsonl"
items=$(wc -l < "$work/fleet.jsonl")
echo "fleet: $items items, $(nproc) cores, $nnzip"
declare -A secs
for r in $(seq 1 "$rounds"); do
  for j in 1 2; do
    out="$work/out-$j-$r"
    s=$("$nnzip" batch run "$work/fleet.jsonl" --out "$out" --jobs "$j" --log-format json |
      python3 -c 'import json,sys; e=[json.loads(l) for l in sys.stdin]; print(e[-1]["seconds"])')
    echo "round $r --jobs $j: $s s, $(python3 -c "print(f'{$items/$s:.2f}')") items/s"
    secs[$j]+="$s "
  done
done
for j in 1 2; do
  python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[2].split()]; m=statistics.median(v); print(f'--jobs {sys.argv[1]}: median {m:.2f} s, {$items/m:.2f} items/s')" "$j" "${secs[$j]}"
done
