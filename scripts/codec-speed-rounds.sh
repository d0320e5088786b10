#!/usr/bin/env bash
# The codec's side-by-side tables (docs/benchmarks.md §3), ROUNDS rounds, each timing ours and
# then the reference NNCodec (scripts/reference-speed.py: nnc.compress / nnc.decompress calls
# in one process, best of two) on the same files:
#  * minilm: MiniLM-L3's float tensors (scripts/onnx-weights-npz.py) through the CLI, wall
#    clock of the whole `nnzip codec encode` / `nnzip codec decode` command (reading and
#    writing files included), best of three. Checks first that our stream is byte-identical
#    to the reference's and that the reference decodes it to our decoder's tensors.
#  * synthetic: the ResNet-18-sized synthetic model of `nnc_speed` and one 1024x2048 Laplacian
#    matrix through the codec examples (codec calls only).
# Needs the reference environment of ../shared/tools/setup-nncodec.sh, and for minilm the
# model of ../shared/tools/fetch-real-models.sh. Run it with nothing else on the machine, or
# at least `nice`: the ratios are side by side, absolute times are indicative.
# usage: scripts/codec-speed-rounds.sh [ROUNDS] [minilm|synthetic|all]
#        env NNCODEC_PY (reference python), MINILM_ONNX (model), NNCODEC_TOOLS (helper scripts)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-4}
what=${2:-all}
py=${NNCODEC_PY:-$HOME/.cache/nncodec-venv/bin/python}
tools=${NNCODEC_TOOLS:-../shared/tools}
minilm=${MINILM_ONNX:-$HOME/.cache/nnzip-real-models/minilm_l3.onnx}
[ -x "$py" ] || { echo "no reference python at $py (run setup-nncodec.sh or set NNCODEC_PY)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
best() { sort -g | head -1; }
secs() { sed -E "s/.*$1 ([0-9.]+) s.*/\1/"; }
# Wall clock of a command, in seconds.
wall() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f\n", e - s }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

if [ "$what" = minilm ] || [ "$what" = all ]; then
  if [ ! -f "$minilm" ]; then
    echo "skipping minilm: no model at $minilm (../shared/tools/fetch-real-models.sh)"
  else
    cargo build -q --release --locked --bin nnzip
    nz=target/release/nnzip
    "$py" scripts/onnx-weights-npz.py "$minilm" "$work/minilm.npz"
    "$nz" codec encode "$work/minilm.npz" -o "$work/ours.nnc"
    "$nz" codec decode "$work/ours.nnc" -o "$work/ours.npz"
    echo "ref   minilm (check): $("$py" scripts/reference-speed.py "$work/minilm.npz" --runs 1 \
      --bitstream "$work/ref.nnc" 2>/dev/null)"
    cmp "$work/ours.nnc" "$work/ref.nnc" && echo "check: our stream is byte-identical to the reference's"
    "$py" "$tools/nncodec_decode.py" "$work/ours.nnc" "$work/ref_of_ours.npz" >/dev/null
    "$py" -c "
import numpy as np, sys
a, b = np.load('$work/ours.npz'), np.load('$work/ref_of_ours.npz')
assert list(a.files) == list(b.files)
assert all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a.files)
print('check: the reference decodes our stream to our decoder\'s tensors (numpy.load reads ours)')"
    for r in $(seq "$rounds"); do
      echo "== minilm round $r $(date +%T), load $(cut -d' ' -f1 /proc/loadavg)"
      e=$(for i in 1 2 3; do wall "$nz" codec encode "$work/minilm.npz" -o "$work/o.nnc"; done | best)
      d=$(for i in 1 2 3; do wall "$nz" codec decode "$work/ours.nnc" -o "$work/o.npz"; done | best)
      ref=$("$py" scripts/reference-speed.py "$work/minilm.npz" --runs 2 2>/dev/null)
      re=$(echo "$ref" | secs encode)
      rd=$(echo "$ref" | secs decode)
      echo "ours  minilm: encode $e s, decode $d s (CLI, whole command)"
      echo "ref   minilm: $ref"
      echo "ratio minilm: encode $(ratio "$re" "$e")x, decode $(ratio "$rd" "$d")x"
    done
  fi
fi

if [ "$what" = synthetic ] || [ "$what" = all ]; then
  cargo build -q --release --locked -p nnc-codec --examples
  ex=target/release/examples
  $ex/nnc_speed "$work/r18.npz" >/dev/null
  "$py" -c "
import numpy as np
w = np.random.default_rng(1).laplace(0.0, 0.01, (1024, 2048)).astype(np.float32)
np.savez('$work/lap2m.npz', weight=w)"
  for r in $(seq "$rounds"); do
    echo "== synthetic round $r $(date +%T), load $(cut -d' ' -f1 /proc/loadavg)"
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
fi
