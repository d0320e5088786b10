#!/usr/bin/env bash
# The Python package end to end: builds the nnzip wheel with maturin (from .venv-fleet/, which
# scripts/setup-fleet.sh makes; the dev profile, so it links the binary the tests already built),
# installs it into a fresh venv, which pulls ONNX Runtime from its PyPI `onnxruntime` dependency,
# and checks that the installed nnzip takes its ONNX Runtime from there (not the repository's
# .ort/), compresses a fixture through the binary and through the Python API.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup-fleet.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root/python" && "$(dirname "$py")/maturin" build --quiet --profile dev --strip -o "$work/wheels" >&2)
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$work"/wheels/nnzip-*.whl
nnzip="$work/venv/bin/nnzip"
lib=$(env -u ORT_DYLIB_PATH "$nnzip" device probe local --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["runtime"]["ort_library"])')
case "$lib" in
  "$work"/venv/*/onnxruntime/capi/*) ;;
  *) echo "test-wheel: the installed nnzip loaded $lib, not the onnxruntime dependency" >&2; exit 1 ;;
esac
env -u ORT_DYLIB_PATH "$nnzip" compress "$root/fixtures/cnn.onnx" -o "$work/cnn.nnc" --runs 0 --json |
  python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["compression_ratio_vs_onnx"] > 1, r'
env -u ORT_DYLIB_PATH "$work/venv/bin/python" - "$root" "$work" <<'PY'
import json, os, sys
import nnzip
root, work = sys.argv[1], sys.argv[2]
r = nnzip.compress(os.path.join(root, "fixtures/mlp.onnx"), os.path.join(work, "mlp.nnc"),
                   options={"runs": 0, "qp": -32})
assert r["compression_ratio_vs_onnx"] > 1 and r["bitstream_bytes"] == os.path.getsize(os.path.join(work, "mlp.nnc")), r
m = os.path.join(work, "fleet.jsonl")
with open(m, "w") as f:
    for id in ("cnn", "mlp"):
        f.write(json.dumps({"id": id, "model": os.path.join(root, f"fixtures/{id}.onnx"), "options": {"runs": 0}}) + "\n")
events = nnzip.batch(m, os.path.join(work, "out"), jobs=2)
assert sorted(e["id"] for e in events if e["event"] == "done") == ["cnn", "mlp"], events
rep = nnzip.batch_report(os.path.join(work, "out"))
assert [row["id"] for row in rep["rows"]] == ["cnn", "mlp"], rep
try:
    nnzip.compress(os.path.join(work, "none.onnx"), os.path.join(work, "x.nnc"))
    raise SystemExit("a missing model did not raise")
except nnzip.NnzipError as e:
    assert e.code == 3 and not e.transient, e
print("test-wheel: ok, ONNX Runtime from the onnxruntime dependency")
PY
