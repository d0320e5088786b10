#!/usr/bin/env bash
# Rate control (`nnzip compress --calib C --max-drop 1`) on the real models with their realistic
# calibration data, and the chosen model on the held-out data (docs/benchmarks.md, "Rate control").
# Cases: the PP-OCRv4 detector (16 images of 640x640), MiniLM-L3 (40 sentences), PP-LCNet with
# the first 16 calibration pages (the case where a budget met on the calibration set broke on
# unseen pages). Wall time and peak RSS by /usr/bin/time (TIMEOUT seconds at most, default 3600).
# NNZIP=path/to/an/older/nnzip measures another build the same way (the "before" column).
# usage: scripts/rate-control.sh [CASE...]     cases: det minilm lcnet16
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${NNZIP:-./target/release/nnzip}
R=${NNZIP_REAL_MODELS:-$HOME/.cache/nnzip-real-models}
D=${NNZIP_REAL_DATA:-$HOME/.cache/nnzip-real-data}
PY=${PY:-$HOME/.cache/nncodec-venv/bin/python}
EVAL=${REAL_EVAL:-fixtures/gen/real_eval.py}
[ -f "$EVAL" ] || EVAL=../main/fixtures/gen/real_eval.py
W=${BENCH_DIR:-target/bench/rate-control}
mkdir -p "$W"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(det minilm lcnet16)

"$PY" - "$D/orientation_lcnet.calib.npz" "$W/lcnet16.npz" <<'EOF'
import sys, numpy as np
z = np.load(sys.argv[1])
np.savez(sys.argv[2], **{k: z[k][:16] for k in z.files})
EOF

echo "| case | seconds | peak MB | parameter bytes | calibration: metric after (before) | held-out: metric, SNR dB, top-1 agreement, task metric |"
echo "|---|---|---|---|---|---|"
for c in "${cases[@]}"; do
  case $c in
    det) m=ppocr_det; calib=$D/ppocr_det.calib.npz; sh=(--shape x=1x3x640x640) ;;
    minilm) m=minilm_l3; calib=$D/minilm_l3.calib.npz; sh=(--shape input_ids=1x128 --shape attention_mask=1x128) ;;
    lcnet16) m=orientation_lcnet; calib=$W/lcnet16.npz; sh=() ;;
    *) echo "unknown case $c" >&2; continue ;;
  esac
  if ! /usr/bin/time -f "%e %M" -o "$W/$c.t" timeout "${TIMEOUT:-3600}" "$N" compress "$R/$m.onnx" \
      -o "$W/$c.nnc" --calib "$calib" --max-drop 1 --runs 0 --json -q "${sh[@]}" > "$W/$c.json" 2> "$W/$c.err"; then
    echo "| $c | did not finish in ${TIMEOUT:-3600} s | | | | |"
    continue
  fi
  "$N" decompress "$W/$c.nnc" -o "$W/$c.onnx" 2>/dev/null
  held=$("$PY" "$EVAL" "$W/$c.onnx" "$D/$m.heldout.npz" --reference "$R/$m.onnx" 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin); f = d['fidelity']; m = f[f['main']]; t = d['metrics']
key = {'orientation': 'accuracy', 'text_detection': 'box_f', 'sentence_embedding': 'pair_ranking_accuracy'}[d['task']]
top1 = m.get('top1_agreement')
print('cosine %.2f%%, SNR %.1f, %s, %s %.4f (original %.4f)' % (100 * m['cosine_per_sample_mean'], m['snr_db'],
      '-' if top1 is None else '%.2f%%' % (100 * top1), key, t[key], d['reference_metrics'][key]))")
  python3 - "$c" "$W/$c.t" "$W/$c.json" "$held" <<'EOF'
import json, sys
c, t, j, held = sys.argv[1:]
s, kb = open(t).read().split()
d = json.load(open(j))
b = d.get('parameter_bytes', d['bitstream_bytes'])
print(f"| {c} | {s} | {int(kb) / 1024:.0f} | {b} | {d['metric']} {d['metric_after']:.2f} ({d['metric_before']:.2f}) | {held} |")
EOF
done
