#!/usr/bin/env bash
# Structured pruning without retraining on the real models (issue 13): the same MAC budget with
# and without reconstruction, per channel score and allocation, each run timed; held-out task
# metric by fixtures/gen/real_eval.py, latency side by side by `nnzip bench --vs`.
#
#   bash scripts/recover-benchmarks.sh [MODEL...]    # default: orientation_lcnet ppocr_cls minilm_l3 ppocr_det
#   ONLY="ours ours-none" bash scripts/recover-benchmarks.sh minilm_l3   # some methods only
#
# Needs the models and data of fixtures/gen/real-data.sh (~/.cache/nnzip-real-models,
# ~/.cache/nnzip-real-data) and its venv (/tmp/nnzip-real-venv). Results: target/recover-bench/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
M=${MODELS:-$HOME/.cache/nnzip-real-models}
D=${DATA:-$HOME/.cache/nnzip-real-data}
PY=${VENV:-/tmp/nnzip-real-venv}/bin/python
OUT=target/recover-bench
mkdir -p "$OUT"
if [ -z "${NNZIP:-}" ]; then
  cargo build --release --locked --bin nnzip >/dev/null
fi
NN=${NNZIP:-./target/release/nnzip}

# MiniLM's own calibration set has 40 sentences (~600 real tokens, fewer than the 1536 features
# of its FFN output layer); sentences of the corpus that are not in the held-out paraphrase
# groups, tokenized by `nnzip calib`, give 147 more.
minilm_calib() {
  [ -f "$OUT/minilm_calib.npz" ] && return
  (cd fixtures/gen && "$PY" - <<'EOF' > "../../$OUT/minilm_sentences.txt"
import real_corpus as C
for s in list(C.EN_SENTENCES) + list(C.EN_HEADINGS) + list(C.EN_SIGNS):
    if s.strip():
        print(s.strip())
EOF
  )
  $NN calib "$M/minilm_l3.onnx" --text "$OUT/minilm_sentences.txt" \
    --tokenizer "$M/minilm_tokenizer.json" -o "$OUT/minilm_calib.npz"
}

# name  target-macs  calib  extra prune flags
settings() {
  case $1 in
    orientation_lcnet) echo "0.5 $D/orientation_lcnet.calib.npz --simplify" ;;
    # Simplification of this model fails at an SE block's reshaped bias (graph layer): the
    # zeroed model is evaluated, MACs are the plan's count.
    ppocr_cls) echo "0.6 $D/ppocr_cls.calib.npz" ;;
    minilm_l3) echo "0.75 $OUT/minilm_calib.npz --simplify" ;;
    ppocr_det) echo "0.8 $D/ppocr_det.calib.npz --calib-samples 8 --simplify" ;;
  esac
}

# label  flags
METHODS=(
  "l1-none:--score l1 --allocate uniform --no-recover"
  "l1-ls:--score l1 --allocate uniform"
  "l2-ls:--score l2 --allocate uniform"
  "wanda-ls:--score wanda --allocate uniform"
  "flap-none:--score flap --allocate standardized --no-recover"
  "flap-ls:--score flap --allocate standardized"
  "ours:--score l1 --allocate measured"
  "ours-r16:--score l1 --allocate measured --round-to 16"
  "ours-none:--score l1 --allocate measured --no-recover"
)

for name in "${@:-orientation_lcnet ppocr_cls minilm_l3 ppocr_det}"; do
  for n in $name; do
    [ "$n" = minilm_l3 ] && minilm_calib
    read -r target calib extra <<<"$(settings "$n")"
    for m in "${METHODS[@]}"; do
      label=${m%%:*}; flags=${m#*:}
      # ONLY="ours ours-none" runs only those methods.
      if [ -n "${ONLY:-}" ] && ! tr ' ' '\n' <<<"$ONLY" | grep -qx -- "$label"; then continue; fi
      o="$OUT/$n.$label"
      start=$(date +%s.%N)
      # shellcheck disable=SC2086
      $NN -q prune "$M/$n.onnx" -o "$o.onnx" --method structured --target-macs "$target" \
        --calib "$calib" $flags $extra --json > "$o.prune.json"
      end=$(date +%s.%N)
      echo "{\"seconds\": $(echo "$end - $start" | bc)}" > "$o.time.json"
      "$PY" fixtures/gen/real_eval.py "$o.onnx" "$D/$n.heldout.npz" --reference "$M/$n.onnx" \
        > "$o.eval.json"
      if [ "${label#ours}" != "$label" ] && grep -q -- --simplify <<<"$extra"; then
        $NN bench "$M/$n.onnx" --vs "$o.onnx" --threads 1 --runs 300 --json > "$o.bench.json" || true
      fi
      echo "$n $label done"
    done
  done
done
"$PY" - "$OUT" <<'EOF'
import json, sys, glob, os
out = sys.argv[1]
print("| model | method | held-out metric | MACs removed | latency ratio | time s |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob(f"{out}/*.prune.json")):
    base = f[: -len(".prune.json")]
    name, label = os.path.basename(base).split(".", 1)
    p = json.load(open(f)); e = json.load(open(base + ".eval.json")); t = json.load(open(base + ".time.json"))
    m = e["metrics"]
    key = next(k for k in ("accuracy", "box_f", "pair_ranking_accuracy", "mask_iou") if k in m) if any(k in m for k in ("accuracy", "box_f", "pair_ranking_accuracy", "mask_iou")) else None
    metric = f"{key} {m[key]:.4f}" + (f" ± {m['se']:.4f}" if "se" in m else "") if key else "?"
    fid = e.get("fidelity", {}); main = fid.get(fid.get("main", ""), {})
    if name.startswith("minilm"):
        metric += f", emb cosine {fid.get('461', {}).get('cosine', float('nan')):.4f}"
    s = p.get("simplify")
    if s:
        macs = 1 - s["after"]["macs"] / s["before"]["macs"]
    else:
        pl = p["plan"]; macs = 1 - pl["macs_planned"] / pl["macs_before"]
    lat = ""
    if os.path.exists(base + ".bench.json"):
        try:
            b = json.load(open(base + ".bench.json")); lat = f"{b['ratio_median']:.3f} ({b['ratio_p10']:.2f}..{b['ratio_p90']:.2f})"
        except Exception:
            pass
    print(f"| {name} | {label} | {metric} | {100*macs:.1f}% | {lat} | {t['seconds']:.0f} |")
EOF
