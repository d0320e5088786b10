#!/usr/bin/env bash
# The default `nnzip compress` against the reference encoder at its default, on the real models
# and their realistic held-out data (docs/benchmarks.md, "The default on real models").
#
# Per model: ours = `nnzip compress MODEL` (per-tensor default rule, simplify on) and the
# reference = `nnzip compress MODEL --reference-compatible --no-simplify` (NNCodec 2.1.3's own
# stream of the original model at QP -38 / -75, DQ on; our encoder is byte-identical to it),
# both decoded with `nnzip decompress` and scored by fixtures/gen/real_eval.py against the original
# on NAME.heldout.npz: output SNR and top-1 agreement of the main output, and the task metric.
# Bytes are the parameter NDUs (without the NNR_TPL unit). Time and peak RSS by /usr/bin/time.
#
# Needs: the models (../shared/tools/fetch-real-models.sh, scripts/fetch-more-models.sh), the data
# (fixtures/gen/real-data.sh), a Python with numpy + onnxruntime (PY, default the NNCodec venv).
# usage: scripts/real-default.sh [MODEL...]      prints a markdown table
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${NNZIP:-./target/release/nnzip}
R=${NNZIP_REAL_MODELS:-$HOME/.cache/nnzip-real-models}
D=${NNZIP_REAL_DATA:-$HOME/.cache/nnzip-real-data}
PY=${PY:-$HOME/.cache/nncodec-venv/bin/python}
EVAL=${REAL_EVAL:-fixtures/gen/real_eval.py}
[ -f "$EVAL" ] || EVAL=../main/fixtures/gen/real_eval.py
W=${BENCH_DIR:-target/bench/real-default}
mkdir -p "$W"
[ -x "$N" ] || cargo build --release --locked -q --bin nnzip

# No --shape and no calibration data: the default job needs none (symbolic sizes and the sample
# rate Silero's branches compare with are chosen by nnzip's input planner).
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(orientation_lcnet ppocr_cls ppocr_det ppocr_rec silero_ifless silero_vad_if minilm_l3 magika)

timed() { # out.json time.txt cmd...: runs cmd, stdout to out.json, "seconds kb" to time.txt
  local out=$1 t=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$t" "$@" > "$out"
}

score() { # decoded.onnx model -> "snr top1 metric"
  "$PY" "$EVAL" "$1" "$D/$2.heldout.npz" --reference "$R/$2.onnx" 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin); f = d['fidelity']; m = f[f['main']]; t = d['metrics']
key = {'orientation': 'accuracy', 'text_direction': 'accuracy', 'text_detection': 'box_f',
       'text_recognition': 'cer', 'sentence_embedding': 'pair_ranking_accuracy',
       'content_type': 'true_type'}.get(d['task'])
val = t.get(key) if key else t.get('recurrent', t.get('stored_state', {})).get('accuracy')
val = val.get('accuracy') if isinstance(val, dict) else val
name = key or 'vad_accuracy'
top1 = m.get('top1_agreement', m.get('decision_agreement', m.get('mask_agreement_p03')))
print('%.1f %s %s=%s' % (m['snr_db'], '-' if top1 is None else '%.2f%%' % (100 * top1), name,
      '-' if val is None else '%.4f' % val))"
}

echo "| model | reference bytes | reference SNR dB | reference top-1 | reference metric | ours bytes | ours/reference | ours SNR dB | ours top-1 | ours metric | compress s | compress peak MB (x ONNX) | decompress s | decompress peak MB (x ONNX) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for m in "${models[@]}"; do
  [ -f "$R/$m.onnx" ] || continue
  size=$(stat -c %s "$R/$m.onnx")
  timed "$W/$m.ref.json" "$W/$m.ref.t" $N compress "$R/$m.onnx" -o "$W/$m.ref.nnc" --reference-compatible \
    --no-simplify --runs 0 --json -q --force
  $N decompress "$W/$m.ref.nnc" -o "$W/$m.ref.onnx" 2>/dev/null
  timed "$W/$m.json" "$W/$m.t" $N compress "$R/$m.onnx" -o "$W/$m.nnc" --runs 0 --json -q
  timed /dev/null "$W/$m.d.t" $N decompress "$W/$m.nnc" -o "$W/$m.onnx" 2>/dev/null
  read -r rs rt rmet <<< "$(score "$W/$m.ref.onnx" "$m")"
  read -r os ot omet <<< "$(score "$W/$m.onnx" "$m")"
  rb=$(python3 -c "import json; print(json.load(open('$W/$m.ref.json'))['parameter_bytes'])")
  ob=$(python3 -c "import json; print(json.load(open('$W/$m.json'))['parameter_bytes'])")
  read -r cs ck < "$W/$m.t"; read -r ds dk < "$W/$m.d.t"
  python3 - "$m" "$rb" "$rs" "$rt" "$rmet" "$ob" "$os" "$ot" "$omet" "$cs" "$ck" "$ds" "$dk" "$size" <<'PYEOF'
import sys
m, rb, rs, rt, rmet, ob, os_, ot, omet, cs, ck, ds, dk, size = sys.argv[1:]
mb = lambda k: f"{int(k) / 1024:.0f} ({int(k) * 1024 / int(size):.1f})"
print(f"| {m} | {rb} | {rs} | {rt} | {rmet} | {ob} | {int(ob) / int(rb):.3f} | {os_} | {ot} | {omet} "
      f"| {cs} | {mb(ck)} | {ds} | {mb(dk)} |")
PYEOF
done
