#!/usr/bin/env bash
# Install the ONNX Runtime shared library that nnzip loads at run time (ort's load-dynamic mode).
# It comes from the PyPI wheel onnxruntime==1.31.1, the one source reachable here; nothing else is
# downloaded. The library lands in .ort/ at the repository root (or $NNZIP_ORT_DIR), where nnzip
# looks for it. Idempotent: does nothing when the library is already there.
set -euo pipefail
VERSION=${ORT_VERSION:-1.31.1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${NNZIP_ORT_DIR:-$root/.ort}
if compgen -G "$dest/libonnxruntime.so*" >/dev/null && [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$VERSION" ]; then
  echo "$dest"; exit 0
fi
command -v python3 >/dev/null || { echo "setup-ort: python3 with pip is needed to fetch the onnxruntime wheel" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "setup-ort: fetching onnxruntime==$VERSION from PyPI ..." >&2
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$VERSION" >&2
whl=$(ls "$tmp"/onnxruntime-*.whl | head -n1)
# A wheel is a zip; python's zipfile avoids needing unzip on the machine.
python3 - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if "/capi/libonnxruntime" in n and ".so" in n:
            z.extract(n, sys.argv[2])
PY
mkdir -p "$dest.new"
find "$tmp/x" -name 'libonnxruntime.so*' -exec cp {} "$dest.new/" \;
compgen -G "$dest.new/libonnxruntime.so*" >/dev/null || { echo "setup-ort: no libonnxruntime.so in $whl" >&2; exit 1; }
echo "$VERSION" > "$dest.new/VERSION"
rm -rf "$dest" && mv "$dest.new" "$dest"
echo "$dest"
