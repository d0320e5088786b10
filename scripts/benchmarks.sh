#!/usr/bin/env bash
# BENCH_SECTIONS=latency|pipeline selects a part; BENCH_REAL=1 adds the real models to the
# pipeline table (slow: rate control runs many ONNX Runtime evaluations of 150 MMAC models).
# Measures what docs/benchmarks.md reports, on this machine, in one go. Needs the fixtures and,
# for the real models, `../shared/tools/fetch-real-models.sh` (or NNZIP_REAL_MODELS=DIR).
# Calibration data without labels (so the metric is top-1 agreement) is derived from the MNIST
# fixture; for the real image models `cargo run --example make_calib` scales MNIST digits to
# their input size. Prints markdown tables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-ort.sh >/dev/null
cargo build --release --locked -q --examples --bin nnzip
N=./target/release/nnzip
R=${NNZIP_REAL_MODELS:-$HOME/.cache/nnzip-real-models}
W=${BENCH_DIR:-target/bench}
mkdir -p "$W"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Calibration data with the labels dropped (top-1 agreement).
./target/release/examples/strip_labels fixtures/mnist_test.npz "$W/mnist_agree.npz"
./target/release/examples/strip_labels fixtures/mnist_test_flat.npz "$W/mnist_flat_agree.npz"
[ -f "$R/orientation_lcnet.onnx" ] && ./target/release/examples/make_calib "$R/orientation_lcnet.onnx" "$W/orientation_calib.npz" 200
[ -f "$R/ppocr_cls.onnx" ] && ./target/release/examples/make_calib "$R/ppocr_cls.onnx" "$W/ppocr_calib.npz" 200 x=1x3x48x192

sections=${BENCH_SECTIONS:-latency,pipeline}
if [[ $sections == *latency* ]]; then
echo "## Structured vs unstructured pruning: latency against MACs"
echo
echo "| model | input | MAC ratio, structured 50% | latency ratio (p10..p90) | latency / MAC | MAC ratio, 50% --round-to 16 | latency ratio (p10..p90) | latency / MAC | unstructured 50% latency ratio (p10..p90) |"
echo "|---|---|---|---|---|---|---|---|---|"
for m in fixtures/cnn.onnx fixtures/resnet.onnx fixtures/mobilenet.onnx "$R/orientation_lcnet.onnx"; do
  [ -f "$m" ] || continue
  b=$(basename "$m" .onnx)
  sh=(--shape input=64x1x28x28); runs=200
  [ "$b" = orientation_lcnet ] && sh=() && runs=60
  $N prune "$m" -o "$W/$b.s50.onnx" --method structured --sparsity 0.5 --simplify -q >/dev/null
  $N prune "$m" -o "$W/$b.s50r16.onnx" --method structured --sparsity 0.5 --round-to 16 --simplify -q >/dev/null
  $N prune "$m" -o "$W/$b.u50.onnx" --method magnitude --sparsity 0.5 -q >/dev/null
  m0=$($N inspect "$m" "${sh[@]}" --json | json "d['macs']")
  row="| $b"
  for v in s50 s50r16; do
    m1=$($N inspect "$W/$b.$v.onnx" "${sh[@]}" --json | json "d['macs']")
    s=$($N bench "$m" --vs "$W/$b.$v.onnx" --runs $runs --threads 1 "${sh[@]}" --json -q)
    mr=$(python3 -c "print('%.3f' % ($m1/$m0))")
    lr=$(echo "$s" | json "'%.3f' % d['ratio_median']")
    sp=$(echo "$s" | json "'%.2f..%.2f' % (d['ratio_p10'], d['ratio_p90'])")
    [ $v = s50 ] && row="$row | $(echo "$s" | json "'x'.join(map(str, d['inputs'][0]['shape']))")"
    row="$row | $mr | $lr ($sp) | $(python3 -c "print('%.2f' % ($lr/$mr))")"
  done
  u=$($N bench "$m" --vs "$W/$b.u50.onnx" --runs $runs --threads 1 "${sh[@]}" --json -q)
  echo "$row | $(echo "$u" | json "'%.3f (%.2f..%.2f)' % (d['ratio_median'], d['ratio_p10'], d['ratio_p90'])") |"
done
fi
if [[ $sections == *pipeline* ]]; then
echo
echo "## Pipeline: (a) reference defaults, (b) --max-drop 1, (c) structured pruning + simplify + (b)"
echo
echo "| model | (a) bytes | (a) agreement | reference best single QP within 1 pt: bytes | same pipeline, single QP: bytes | (b) bytes | (b) agreement | (b)/reference single | (b)/same-pipeline single | (c) bytes | (c) agreement | (c) params | latency orig ms | (b) ms | (c) ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for pair in "fixtures/cnn.onnx:$W/mnist_agree.npz" "fixtures/resnet.onnx:$W/mnist_agree.npz" "fixtures/mobilenet.onnx:$W/mnist_agree.npz" \
            "fixtures/mlp.onnx:$W/mnist_flat_agree.npz" "fixtures/transformer.onnx:$W/mnist_agree.npz" \
            ${BENCH_REAL:+"$R/orientation_lcnet.onnx:$W/orientation_calib.npz" "$R/ppocr_cls.onnx:$W/ppocr_calib.npz"}; do
  m=${pair%%:*}; c=${pair#*:}
  [ -f "$m" ] && [ -f "$c" ] || continue
  b=$(basename "$m" .onnx)
  sh=(); [ "$b" = ppocr_cls ] && sh=(--shape x=1x3x48x192)
  a=$($N compress "$m" -o "$W/$b.a.nnc" --no-simplify --reference-compatible --calib "$c" --runs 0 "${sh[@]}" --json -q)
  bb=$($N compress "$m" -o "$W/$b.b.nnc" --calib "$c" --max-drop 1 --compare-single-qp --runs 30 "${sh[@]}" --json -q)
  cc=$($N compress "$m" -o "$W/$b.c.nnc" --calib "$c" --max-drop 1 --prune structured --runs 30 "${sh[@]}" --json -q || echo '{}')
  single=$(echo "$bb" | json "d['best_single_qp']['bitstream_bytes'] if d['best_single_qp'] else 0")
  rsingle=$(echo "$bb" | json "d['best_single_qp_reference']['bitstream_bytes'] if d['best_single_qp_reference'] else 0")
  bbytes=$(echo "$bb" | json "d['bitstream_bytes']")
  echo "| $b | $(echo "$a" | json "d['bitstream_bytes']") | $(echo "$a" | json "'%.1f' % d['metric_after']") | $rsingle | $single \
| $bbytes | $(echo "$bb" | json "'%.1f' % d['metric_after']") \
| $(python3 -c "print('%.3f' % ($bbytes/max(1,$rsingle)))") | $(python3 -c "print('%.3f' % ($bbytes/max(1,$single)))") \
| $(echo "$cc" | json "d.get('bitstream_bytes','-')") | $(echo "$cc" | json "'%.1f' % d['metric_after'] if 'metric_after' in d else '-'") \
| $(echo "$cc" | json "d.get('parameters_after','-')") \
| $(echo "$bb" | json "'%.3f' % d['latency_ms_original']") | $(echo "$bb" | json "'%.3f' % d['latency_ms_compressed']") \
| $(echo "$cc" | json "'%.3f' % d['latency_ms_compressed'] if d.get('latency_ms_compressed') else '-'") |"
done
fi
