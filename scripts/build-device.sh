#!/usr/bin/env bash
# Cross-builds nnzip for a target device and fetches the ONNX Runtime library for it, into
# dist/ARCH/ (nnzip and libonnxruntime.so.*), where `--device` finds them to push to a device
# that has no nnzip of its own (docs/devices.md).
#
#   bash scripts/build-device.sh aarch64      # 64-bit ARM: Raspberry Pi OS 64-bit, phones, ...
#
# - the Rust target comes from rustup (`rustup target add aarch64-unknown-linux-gnu`); where
#   rustup refuses it, this script says so and stops;
# - the linker and C compiler are Debian's gcc-aarch64-linux-gnu (installed with apt-get when
#   missing and running as root);
# - ONNX Runtime is the PyPI wheel onnxruntime==$ORT_VERSION for manylinux_2_28_aarch64, fetched
#   on this machine as scripts/setup-ort.sh does (so the device needs glibc >= 2.28).
# The binary links against the glibc of this machine's cross toolchain (Debian bookworm: 2.36);
# an older device needs a toolchain of its age.
set -euo pipefail
arch=${1:-}
VERSION=${ORT_VERSION:-1.31.1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "$arch" in
  aarch64|arm64) arch=aarch64; triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; wheel=manylinux_2_28_aarch64 ;;
  *) echo "usage: scripts/build-device.sh aarch64" >&2
     echo "(32-bit ARM has no ONNX Runtime wheel on PyPI: see docs/devices.md)" >&2; exit 2 ;;
esac
dest=$root/dist/$arch
if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
  if ! rustup target add "$triple"; then
    echo "build-device: rustup refused 'rustup target add $triple' on this machine;" >&2
    echo "build-device: the cross build needs it (its standard library), so stopping here." >&2
    exit 1
  fi
fi
if ! command -v "$gnu-gcc" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "gcc-$gnu" "libc6-dev-arm64-cross" >&2
  else
    echo "build-device: needs $gnu-gcc (Debian: apt-get install gcc-$gnu)" >&2; exit 1
  fi
fi
export "CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_LINKER=$gnu-gcc"
export "CC_$(echo "$triple" | tr '-' '_')=$gnu-gcc"
export "AR_$(echo "$triple" | tr '-' '_')=$gnu-ar"
echo "build-device: cargo build --release --target $triple ..." >&2
(cd "$root" && nice -n 10 cargo build --release --locked --target "$triple" --bin nnzip >&2)
mkdir -p "$dest"
# Stripped: it is sent over the wire to every device that lacks it.
"$gnu-strip" -o "$dest/nnzip.new" "$root/target/$triple/release/nnzip" && mv "$dest/nnzip.new" "$dest/nnzip"
if ! [ -f "$dest/libonnxruntime.so.$VERSION" ]; then
  rm -f "$dest"/libonnxruntime.so*   # another version: one library per folder
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "build-device: fetching onnxruntime==$VERSION ($wheel) from PyPI ..." >&2
  python3 -m pip download -q --no-deps --only-binary=:all: --platform "$wheel" \
    --python-version 3.11 --implementation cp -d "$tmp" "onnxruntime==$VERSION" >&2
  whl=$(ls "$tmp"/onnxruntime-*.whl | head -n1)
  python3 - "$whl" "$dest" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if "/capi/libonnxruntime.so" in n:
            with z.open(n) as src, open(os.path.join(sys.argv[2], os.path.basename(n)), "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
fi
echo "$VERSION" > "$dest/ORT_VERSION"
ls -l "$dest" >&2
echo "$dest"
