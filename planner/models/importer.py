"""Importing a real model: a llama.cpp GGUF file, a Hugging Face checkpoint folder or an existing
onnxruntime-genai folder becomes onnxruntime-genai folders, one per precision (``OUT/int4``, ...).

This is the runtime side and imports no torch. A genai folder is checked (the files the runtime
needs, its graph, a short generation) and copied. A GGUF file or a checkpoint is converted by
``convert_checkpoint.py`` (beside this module, shipped with the package, never imported) running
in the *build environment*: a virtualenv with torch CPU, transformers, gguf and the
onnxruntime-genai model builder, pinned by ``build-requirements.txt``. It is created on first use
in the cache (``~/.cache/migration-planner/build-venv``, about 1.2 GB, a minute), or named with
``--build-python`` / ``MIGRATION_PLANNER_BUILD_PYTHON``. What can be checked without it is checked
first (the file exists, is a model, its architecture is one the installed builder converts), so a
mistake costs a second, not a build. The script's progress lines are passed on as they come; its
one-line error becomes a :class:`planner.errors.ModelImportError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from planner.errors import ModelFolderError, ModelImportError
from planner.models.folder import inspect_model, open_model_folder

HERE = Path(__file__).resolve().parent
CONVERT_SCRIPT = HERE / "convert_checkpoint.py"
BUILD_REQUIREMENTS = HERE / "build-requirements.txt"
BUILD_PYTHON_ENV = "MIGRATION_PLANNER_BUILD_PYTHON"
PRECISIONS = ("int4", "int8", "fp32")
# What the build environment must import (checked before a conversion starts).
BUILD_MODULES = ("torch", "transformers", "gguf", "onnxruntime_genai", "onnx_ir")
ERROR_PREFIX = "convert_checkpoint: error: "
# onnxruntime-genai builds these for CUDA (or as non-text models) only.
NOT_ON_CPU = {
    "WhisperForConditionalGeneration": "a speech model",
    "PhiMoEForCausalLM": "built for CUDA only",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImportSource:
    """What ``models import`` was given."""

    path: Path
    kind: str  # "gguf", "hf" (a Hugging Face checkpoint folder) or "genai"
    architecture: str | None  # GGUF general.architecture or config.json architectures[0]
    bytes: int


@dataclass
class ImportResult:
    """The folders written, with what each came from and took."""

    source: ImportSource
    build_python: str | None
    folders: dict[str, str] = field(default_factory=dict)  # precision -> folder
    sizes: dict[str, int] = field(default_factory=dict)  # precision -> bytes on disk
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source.path),
            "source_kind": self.source.kind,
            "architecture": self.source.architecture,
            "build_python": self.build_python,
            "folders": self.folders,
            "bytes": self.sizes,
            "seconds": round(self.seconds, 1),
        }


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _gguf_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    return handle.read(length).decode("utf-8", errors="replace")


# GGUF metadata value types: fixed sizes; 8 is a string, 9 an array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_gguf_value(handle: BinaryIO, kind: int) -> None:
    if kind == 8:
        _gguf_string(handle)
    elif kind == 9:
        item, count = struct.unpack("<IQ", handle.read(12))
        if item in _GGUF_SIZES:
            handle.seek(_GGUF_SIZES[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_gguf_value(handle, item)
    elif kind in _GGUF_SIZES:
        handle.seek(_GGUF_SIZES[kind], os.SEEK_CUR)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def gguf_architecture(path: Path) -> str | None:
    """``general.architecture`` from a GGUF header (read in place, no library), or None."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            return None
        version, _tensors, pairs = struct.unpack("<IQQ", handle.read(20))
        if version < 2:
            return None
        for _ in range(pairs):
            key = _gguf_string(handle)
            (kind,) = struct.unpack("<I", handle.read(4))
            if key == "general.architecture" and kind == 8:
                return _gguf_string(handle)
            _skip_gguf_value(handle, kind)
    return None


def builder_architectures() -> set[str]:
    """The Hugging Face architectures the installed onnxruntime-genai model builder converts,
    read from its source (importing it would need torch); empty when it is not there."""
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or spec.origin is None:
        return set()
    builder = Path(spec.origin).parent / "models" / "builder.py"
    if not builder.is_file():
        return set()
    text = builder.read_text(encoding="utf-8")
    return set(re.findall(r'architectures\[0\] == "(\w+)"', text)) - set(NOT_ON_CPU)


def detect_source(path: Path) -> ImportSource:
    """What ``path`` is; anything that cannot be imported is one ModelImportError naming it."""
    if not path.exists():
        raise ModelImportError(str(path), "no such file or folder")
    if path.is_file():
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != b"GGUF":
            raise ModelImportError(
                str(path),
                "not a GGUF file (no GGUF magic bytes); give a .gguf file, a Hugging Face "
                "checkpoint folder or an onnxruntime-genai folder",
            )
        try:
            arch = gguf_architecture(path)
        except (ValueError, struct.error, OSError) as exc:
            raise ModelImportError(str(path), f"unreadable GGUF header: {exc}") from exc
        return ImportSource(path, "gguf", arch, path.stat().st_size)
    if (path / "genai_config.json").is_file():
        return ImportSource(path, "genai", None, _folder_bytes(path))
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelImportError(
            str(path),
            "not a model folder: no genai_config.json (onnxruntime-genai) and no config.json "
            "(Hugging Face checkpoint)",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelImportError(str(config_path), f"not valid JSON: {exc}") from exc
    names = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise ModelImportError(str(config_path), "field architectures is missing")
    arch = names[0]
    supported = builder_architectures()
    if supported and arch not in supported:
        why = NOT_ON_CPU.get(arch, "not supported by the onnxruntime-genai model builder")
        raise ModelImportError(
            str(config_path),
            f"architecture {arch} is {why} (supported: {', '.join(sorted(supported))})",
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ModelImportError(str(path), "no *.safetensors or pytorch_model*.bin weights")
    return ImportSource(path, "hf", arch, _folder_bytes(path))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migration-planner"


def _missing_modules(python: Path) -> list[str]:
    probe = (
        "import importlib.util as u; "
        f"print(' '.join(m for m in {list(BUILD_MODULES)!r} if u.find_spec(m) is None))"
    )
    done = subprocess.run(
        [str(python), "-I", "-c", probe], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ModelImportError(str(python), f"does not run: {done.stderr.strip()[-300:]}")
    return done.stdout.split()


def _requirements_digest() -> str:
    return hashlib.sha256(BUILD_REQUIREMENTS.read_bytes()).hexdigest()[:16]


def build_python(explicit: Path | None = None, progress: Progress = print) -> Path:
    """The Python of the build environment: ``explicit``, else ``$MIGRATION_PLANNER_BUILD_PYTHON``,
    else the cache's venv, created (or brought up to the pinned requirements) here."""
    named = explicit or (
        Path(os.environ[BUILD_PYTHON_ENV]) if os.environ.get(BUILD_PYTHON_ENV) else None
    )
    if named is not None:
        where = "--build-python" if explicit else BUILD_PYTHON_ENV
        if not named.is_file():
            raise ModelImportError(str(named), f"no such Python ({where})")
        missing = _missing_modules(named)
        if missing:
            raise ModelImportError(
                str(named),
                f"cannot import {', '.join(missing)} ({where}); install the build environment "
                f"with: {named} -m pip install -r {BUILD_REQUIREMENTS}",
            )
        return named
    venv = cache_root() / "build-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = _requirements_digest()
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return python
    started = time.monotonic()
    progress(f"creating the build environment {venv} (torch CPU, transformers, gguf; once, ~1 min)")
    steps = []
    if not python.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps.append([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    steps.append([str(python), "-m", "pip", "install", "--quiet", "-r", str(BUILD_REQUIREMENTS)])
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "Location" not in ln]
            last = lines[-1].strip() if lines else f"exit status {done.returncode}"
            raise ModelImportError(str(venv), f"cannot create the build environment: {last}")
    stamp.write_text(wanted + "\n")
    progress(f"build environment ready in {time.monotonic() - started:.0f}s")
    return python


def _detected_precision(folder: Path) -> str:
    quantization = inspect_model(folder).quantization
    for name in ("int4", "int8"):
        if quantization.startswith(name):
            return name
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(
        quantization.split()[0], quantization.split()[0]
    )


def check_generates(folder: Path) -> None:
    """Loads ``folder`` with onnxruntime-genai and generates two tokens; a failure names it."""
    import onnxruntime_genai as og

    try:
        model = og.Model(str(folder))
        ids = og.Tokenizer(model).encode("Hello")
        params = og.GeneratorParams(model)
        # a sliding-window cache refuses a max_length under its window (Gemma 3: 512)
        config = open_model_folder(folder).config["model"]
        window = config["decoder"].get("sliding_window") or {}
        room = int(window.get("window_size", 0))
        if window.get("layers") == [] or room >= int(config.get("context_length", 0)):
            room = 0
        params.set_search_options(max_length=max(len(ids) + 2, room))
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        for _ in range(2):
            generator.generate_next_token()
    except Exception as exc:  # og raises RuntimeError/OSError with the runtime's own message
        raise ModelImportError(
            str(folder), f"onnxruntime-genai cannot run it: {type(exc).__name__}: {exc}"
        ) from exc


def _copy_genai_folder(
    source: ImportSource, out: Path, precisions: Sequence[str], force: bool, progress: Progress
) -> dict[str, str]:
    try:
        open_model_folder(source.path)
        precision = _detected_precision(source.path)
    except ModelFolderError as exc:
        raise ModelImportError(exc.path, exc.reason) from exc
    if precisions and list(precisions) != [precision]:
        raise ModelImportError(
            str(source.path),
            f"is an onnxruntime-genai folder in {precision}: it is copied as it is "
            f"(for another precision use `models quantize`, or import the original checkpoint)",
        )
    target = out / precision
    if target.exists() and not force:
        raise ModelImportError(str(target), "already exists (pass --force to replace it)")
    progress(f"checking {source.path} (onnxruntime-genai folder, {precision})")
    check_generates(source.path)
    partial = out / f".{precision}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source.path, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelImportError(str(target), f"cannot write: {exc}") from exc
    progress(f"copied to {target}")
    return {precision: str(target)}


def _run_converter(python: Path, args: list[str], source: ImportSource, progress: Progress) -> None:
    """Runs the conversion script, passing each progress line on as it comes."""
    cmd = [str(python), "-I", str(CONVERT_SCRIPT), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    error: str | None = None
    tail: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    ) as child:
        assert child.stderr is not None
        try:
            for line in child.stderr:
                line = line.rstrip("\n")
                if line.startswith(ERROR_PREFIX):
                    error = line[len(ERROR_PREFIX) :]
                elif line.strip():
                    tail = [*tail[-9:], line]
                    progress(line)
        except KeyboardInterrupt:
            child.terminate()
            raise
        code = child.wait()
    if code == 0:
        return
    if error is None:
        last = tail[-1].strip() if tail else f"exit status {code}"
        if code < 0:
            last = f"killed by signal {-code} (out of memory?)"
        raise ModelImportError(str(source.path), f"the conversion failed: {last}")
    where, sep, reason = error.partition(": ")
    raise ModelImportError(where, reason) if sep else ModelImportError(str(source.path), error)


def import_model(
    source_path: Path,
    out: Path,
    precisions: Sequence[str] = (),
    *,
    context_cap: int | None = None,
    force: bool = False,
    python: Path | None = None,
    progress: Progress = print,
) -> ImportResult:
    """Imports ``source_path`` into ``out/<precision>`` for each precision (default int4; a genai
    folder is copied in its own precision). Nothing is left half-written."""
    started = time.monotonic()
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ModelImportError(
            f"--precision {unknown[0]}", f"expected one of {', '.join(PRECISIONS)}"
        )
    if context_cap is not None and context_cap < 256:
        raise ModelImportError(f"--context-cap {context_cap}", "must be at least 256")
    source = detect_source(source_path)
    if out.exists() and not out.is_dir():
        raise ModelImportError(str(out), "exists and is not a folder")
    if source.kind == "genai":
        if context_cap is not None:
            raise ModelImportError(
                str(source.path), "--context-cap applies to conversions, not to a copied folder"
            )
        folders = _copy_genai_folder(source, out, precisions, force, progress)
        result = ImportResult(source, None, folders)
    else:
        wanted = list(dict.fromkeys(precisions or ["int4"]))
        taken = [out / p for p in wanted if (out / p).exists()]
        if taken and not force:
            raise ModelImportError(str(taken[0]), "already exists (pass --force to replace it)")
        what = "GGUF file" if source.kind == "gguf" else "Hugging Face checkpoint"
        progress(
            f"importing {source.path.name} ({what}, {source.architecture or 'architecture ?'}, "
            f"{source.bytes / 1e6:.0f} MB) as {', '.join(wanted)}"
        )
        interpreter = build_python(python, progress)
        args = ["--source", str(source.path), "--out", str(out)]
        args += [item for p in wanted for item in ("--precision", p)]
        if context_cap is not None:
            args += ["--context-cap", str(context_cap)]
        if force:
            args.append("--force")
        _run_converter(interpreter, args, source, progress)
        result = ImportResult(source, str(interpreter), {p: str(out / p) for p in wanted})
    for precision, folder in result.folders.items():
        open_model_folder(folder)  # what the runtime will need is there
        result.sizes[precision] = _folder_bytes(Path(folder))
    result.seconds = time.monotonic() - started
    return result
