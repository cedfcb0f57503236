"""Model-folder fingerprints: what hashing every byte costs once, and what a nightly run pays after.

On a real-size folder (the Phi-4-mini-shaped INT4 folder in ``~/.cache/migration-planner/models``
when it is there, ~2.4 GB; else a 256 MB stand-in built in a temporary folder), side by side:

1. first fingerprint, with an empty digest cache (every byte read and hashed; the OS may or may not
   hold the file in its page cache), then once more with an empty cache (now surely from memory);
2. a later run's fingerprint: a new process's view (the in-process memo cleared) with the digest
   cache file in place: a stat per file and one small JSON read;
3. the same process again (memo hit);
4. for scale, what the previous fingerprint read on every call: ``genai_config.json`` and the
   graph file (not the weights).

Goal: the cached fingerprint costs under 1% of the first. The model folder is only read, never
changed; the digest caches are temporary files. Run: ``make bench BENCH_ARGS=fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import planner.models.folder as folder_module  # noqa: E402
from planner.models.folder import fingerprint, open_model_folder  # noqa: E402
from planner.models.tiny import build_tiny_model  # noqa: E402

REAL = Path.home() / ".cache" / "migration-planner" / "models" / "phi4-mini-shape" / "int4"
STAND_IN_MB = 256


def _folder(tmp: Path) -> tuple[Path, str]:
    if (REAL / "genai_config.json").is_file():
        return REAL, "phi4-mini-shape/int4"
    folder = build_tiny_model(tmp / "stand-in", layers=2, hidden=64, heads=4, seed=0)
    with (folder / "padding.bin").open("wb") as fh:
        block = bytes(range(256)) * 4096  # 1 MB
        for _ in range(STAND_IN_MB):
            fh.write(block)
    return folder, f"{STAND_IN_MB} MB stand-in (no real model folder found)"


def _timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _old_reads(folder: Path) -> None:
    """What the names-and-sizes fingerprint hashed on every call: the config and the graph."""
    model = open_model_folder(folder)
    for p in (model.path / "genai_config.json", model.model_file):
        with p.open("rb") as fh:
            hashlib.file_digest(fh, "sha256")


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fingerprint-bench-") as tmp_name:
        tmp = Path(tmp_name)
        folder, what = _folder(tmp)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(
            f"folder: {folder} ({what}), {size / 1e9:.2f} GB in {len(list(folder.iterdir()))} files"
        )
        figures: dict[str, Any] = {"folder": what, "bytes": size}

        cold_cache = tmp / "first.json"
        folder_module._memo.clear()
        first_s, first = _timed(lambda: fingerprint(folder, cache_file=cold_cache))
        warm_cache = tmp / "again.json"
        folder_module._memo.clear()
        again_s, again = _timed(lambda: fingerprint(folder, cache_file=warm_cache))
        assert first == again
        cached = []
        for _ in range(5):
            folder_module._memo.clear()  # a new process: only the digest cache file helps
            seconds, value = _timed(lambda: fingerprint(folder, cache_file=warm_cache))
            assert value == first
            cached.append(seconds)
        memo_s, _ = _timed(lambda: fingerprint(folder, cache_file=warm_cache))
        old = min(_timed(lambda: _old_reads(folder))[0] for _ in range(3))
        cached_s = min(cached)

        rows = [
            ("first fingerprint (empty digest cache)", first_s),
            ("again, empty digest cache (file in page cache)", again_s),
            ("a later run (digest cache, new process)", cached_s),
            ("same process again (memo)", memo_s),
            ("previous fingerprint's reads per call (config + graph)", old),
        ]
        for label, seconds in rows:
            print(f"  {label:<56} {seconds * 1000:>10.1f} ms")
        rate = size / again_s / 1e6
        ratio = cached_s / again_s
        print(f"  hashing rate {rate:,.0f} MB/s; cached / first = {ratio:.5f} (goal < 0.01)")
        default = json.dumps(str(folder_module.fingerprint_cache_file()))
        print(f"  (outside the bench, digests are remembered in {default})")
        figures.update(
            first_s=first_s,
            first_again_s=again_s,
            cached_s=cached_s,
            memo_s=memo_s,
            old_per_call_s=old,
            hash_mb_per_s=rate,
            cached_over_first=ratio,
            goal_met=ratio < 0.01,
        )
        return figures


if __name__ == "__main__":
    run()
