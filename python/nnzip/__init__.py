"""A thin typed API over the ``nnzip`` command that this package installs.

Every call runs the binary and returns its JSON (docs/cli.md lists the fields); a non-zero exit
raises :class:`NnzipError` with the exit code (docs/cli.md, "Exit codes"), so pipeline code can
tell a transient failure (75) from a bad input (3).

    import nnzip
    report = nnzip.compress("model.onnx", "model.nnc", options={"max_drop": 1.0, "calib": "c.npz"})
    events = nnzip.batch("fleet.jsonl", "s3://bucket/out", jobs=2, shard="auto")
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["NnzipError", "binary", "run", "compress", "batch", "batch_status", "batch_report"]

TRANSIENT = 75


class NnzipError(RuntimeError):
    """``nnzip`` exited with a non-zero code; ``code`` says why, ``stderr`` how."""

    def __init__(self, code: int, stderr: str, stdout: str = "") -> None:
        super().__init__(f"nnzip exited with {code}: {stderr.strip()}")
        self.code = code
        self.stderr = stderr
        self.stdout = stdout

    @property
    def transient(self) -> bool:
        """Whether retrying may work (exit 75, EX_TEMPFAIL)."""
        return self.code == TRANSIENT


def binary() -> str:
    """The ``nnzip`` executable: the one installed with this package, else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "nnzip")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("nnzip")
    if found is None:
        raise FileNotFoundError("the nnzip binary is neither beside this Python nor on PATH")
    return found


def run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``nnzip ARGS`` and returns the finished process (stdout and stderr as text)."""
    p = subprocess.run([binary(), *args], capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise NnzipError(p.returncode, p.stderr, p.stdout)
    return p


def _flags(options: Mapping[str, Any]) -> List[str]:
    """``compress`` flags from manifest-style options (snake case keys, docs/batch.md)."""
    out: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif key == "shape":
            for name, dims in value.items():
                out += [flag, f"{name}={'x'.join(str(d) for d in dims)}"]
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def compress(model: str, output: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``nnzip compress MODEL -o OUTPUT --json`` with ``options`` as in a manifest line
    (``{"max_drop": 1.0, "shape": {"x": [1, 3, 224, 224]}, "no_dq": True}``); returns the report."""
    p = run(["compress", model, "-o", output, "--json", *_flags(options or {})])
    return json.loads(p.stdout)


def batch(manifest: str, out: str, *, jobs: int = 1, shard: Optional[str] = None,
          defaults: Optional[str] = None, retry_failed: bool = False,
          check: bool = True) -> List[Dict[str, Any]]:
    """``nnzip batch run`` with JSON events; returns them. Exit 3 (some items failed, recorded)
    raises only with ``check=True``; the events name the failures either way."""
    args = ["batch", "run", manifest, "--out", out, "--jobs", str(jobs), "--log-format", "json"]
    if shard is not None:
        args += ["--shard", shard]
    if defaults is not None:
        args += ["--defaults", defaults]
    if retry_failed:
        args.append("--retry-failed")
    p = run(args, check=check)
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def batch_status(out: str, manifest: Optional[str] = None) -> Dict[str, Any]:
    """``nnzip batch status OUT --json``: counts and per-item states."""
    args = ["batch", "status", out, "--json"] + (["--manifest", manifest] if manifest else [])
    return json.loads(run(args).stdout)


def batch_report(out: str, manifest: Optional[str] = None) -> Dict[str, Any]:
    """``nnzip batch report OUT --json``: one row per item, totals, slowest and worst."""
    args = ["batch", "report", out, "--json"] + (["--manifest", manifest] if manifest else [])
    return json.loads(run(args).stdout)
