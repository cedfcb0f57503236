"""onnxruntime-genai model folders: checking one, describing it, and fingerprinting it cheaply.

A folder is ``genai_config.json`` + the decoder graph it names (``model.onnx``, usually with its
weights as external data beside it) + the tokenizer (``tokenizer.json`` or ``tokenizer.model``,
and ``tokenizer_config.json``, which onnxruntime-genai requires and where the chat template
lives). :func:`open_model_folder` names the first missing piece in a
:class:`planner.errors.ModelFolderError`; :func:`inspect_model` reads the graph's structure
(never its weights) to report parameters and quantization.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from planner.errors import ModelFolderError

CONFIG_FILE = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Initializers that are not learned weights: quantization scales/zero points, rotary caches.
_NOT_PARAMETERS = ("_scale", "_zero_point", "scales", "zero_points", "cos_cache", "sin_cache")
_FLOAT_TYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}
_KV_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2}


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder and its parsed ``genai_config.json``."""

    path: Path
    config: dict[str, Any]
    model_file: Path

    @property
    def decoder(self) -> dict[str, Any]:
        return dict(self.config["model"].get("decoder", {}))

    def chat_template(self) -> str | None:
        """The Jinja chat template: ``chat_template.jinja`` or ``tokenizer_config.json``."""
        jinja = self.path / CHAT_TEMPLATE_FILE
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        try:
            tok_config = json.loads((self.path / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFolderError(
                str(self.path / TOKENIZER_CONFIG), f"not readable JSON: {exc}"
            ) from exc
        template = tok_config.get("chat_template") if isinstance(tok_config, dict) else None
        if isinstance(template, list):  # HF's named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) and template.strip() else None

    def special_tokens(self) -> dict[str, str]:
        """``bos_token``/``eos_token`` strings from ``tokenizer_config.json`` (for templates)."""
        try:
            tok_config = json.loads((self.path / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        out = {}
        for key in ("bos_token", "eos_token"):
            value = tok_config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                out[key] = value
        return out


def open_model_folder(path: Path | str) -> ModelFolder:
    """Checks ``path`` is an onnxruntime-genai folder; the error names the missing file."""
    folder = Path(path)
    if not folder.exists():
        raise ModelFolderError(str(folder), "no such directory")
    if not folder.is_dir():
        raise ModelFolderError(str(folder), "not a directory (a model is a folder)")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelFolderError(
            str(folder), f"missing {CONFIG_FILE}: not an onnxruntime-genai model folder"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFolderError(str(config_path), f"not valid JSON: {exc}") from exc
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("decoder"), dict):
        raise ModelFolderError(str(config_path), "field model.decoder is missing")
    filename = model["decoder"].get("filename")
    if not isinstance(filename, str) or not filename:
        raise ModelFolderError(str(config_path), "field model.decoder.filename is missing")
    model_file = folder / filename
    if not model_file.is_file():
        raise ModelFolderError(str(folder), f"missing {filename} (named by {CONFIG_FILE})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(str(folder), f"missing {' or '.join(TOKENIZER_FILES)}")
    if not (folder / TOKENIZER_CONFIG).is_file():
        raise ModelFolderError(
            str(folder), f"missing {TOKENIZER_CONFIG} (onnxruntime-genai requires it)"
        )
    return ModelFolder(path=folder, config=config, model_file=model_file)


@dataclass(frozen=True)
class ModelInfo:
    """What ``models inspect`` reports about one folder."""

    path: str
    model_type: str
    parameters: int
    quantization: str  # e.g. "int4 (MatMulNBits, block 32)", "int8 (MatMulInteger)", "float32"
    quant_ops: dict[str, int]  # MatMulNBits / MatMulInteger / MatMul(float) node counts
    weight_dtype: str
    bytes_on_disk: int
    weight_bytes: int  # the graph file and its external data
    context_length: int
    vocab_size: int
    hidden_size: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_size: int
    kv_bytes_per_token: int  # keys + values of every layer for one token
    chat_template: bool
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _external_files(model: onnx.ModelProto) -> set[str]:
    names = set()
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return names


def _numel(tensor: TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def inspect_model(path: Path | str) -> ModelInfo:
    """Parameters, quantization, size, context and vocabulary of a model folder."""
    folder = open_model_folder(path)
    try:
        graph_model = onnx.load(str(folder.model_file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelFolderError(str(folder.model_file), f"not a readable ONNX graph: {exc}") from exc
    graph = graph_model.graph
    inits = {init.name: init for init in graph.initializer}
    ops = Counter(node.op_type for node in graph.node)

    skip: set[str] = set()
    params = 0
    bits_seen: set[int] = set()
    blocks_seen: set[int] = set()
    float_matmuls = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            params += int(attrs.get("K", 0)) * int(attrs.get("N", 0))
            bits_seen.add(int(attrs.get("bits", 4)))
            blocks_seen.add(int(attrs.get("block_size", 0)))
            skip.update(node.input[1:])
        elif node.op_type == "GatherBlockQuantized":
            if node.input and node.input[0] in inits:
                params += _numel(inits[node.input[0]]) * (8 // int(attrs.get("bits", 4)))
            skip.update(node.input)
        elif node.op_type == "MatMulInteger":
            skip.update(node.input[2:])
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            float_matmuls += 1
    weight_types: Counter[str] = Counter()
    for name, init in inits.items():
        if name in skip or any(marker in name for marker in _NOT_PARAMETERS):
            continue
        numel = _numel(init)
        if numel <= 1:
            continue
        if init.data_type in _FLOAT_TYPES:
            params += numel
            weight_types[_FLOAT_TYPES[init.data_type]] += numel
        elif init.data_type in (TensorProto.INT8, TensorProto.UINT8):
            params += numel
    quant_ops = {
        "MatMulNBits": ops.get("MatMulNBits", 0),
        "MatMulInteger": ops.get("MatMulInteger", 0),
        "MatMul(float)": float_matmuls,
    }
    weight_dtype = weight_types.most_common(1)[0][0] if weight_types else "float32"
    if quant_ops["MatMulNBits"]:
        bits = "/".join(str(b) for b in sorted(bits_seen))
        blocks = "/".join(str(b) for b in sorted(blocks_seen))
        quantization = f"int{bits} (MatMulNBits, block {blocks})"
    elif quant_ops["MatMulInteger"]:
        quantization = "int8 (MatMulInteger, dynamic)"
    else:
        quantization = weight_dtype
    if (quant_ops["MatMulNBits"] or quant_ops["MatMulInteger"]) and float_matmuls:
        quantization += f" + {float_matmuls} float MatMul"

    model_cfg = folder.config["model"]
    dec = folder.decoder
    layers = int(dec.get("num_hidden_layers", 0))
    heads = int(dec.get("num_attention_heads", 0))
    kv_heads = int(dec.get("num_key_value_heads", heads))
    head_size = int(dec.get("head_size", 0)) or (int(dec.get("hidden_size", 0)) // max(heads, 1))
    kv_dtype = TensorProto.FLOAT
    for value in graph.input:
        if "past" in value.name and "key" in value.name:
            kv_dtype = value.type.tensor_type.elem_type
            break
    kv_bytes = 2 * layers * kv_heads * head_size * _KV_BYTES.get(kv_dtype, 4)

    files = sorted(p for p in folder.path.rglob("*") if p.is_file())
    weight_files = {folder.model_file} | {
        folder.model_file.parent / name for name in _external_files(graph_model)
    }
    return ModelInfo(
        path=str(folder.path),
        model_type=str(model_cfg.get("type", "")),
        parameters=params,
        quantization=quantization,
        quant_ops=quant_ops,
        weight_dtype=weight_dtype,
        bytes_on_disk=sum(p.stat().st_size for p in files),
        weight_bytes=sum(p.stat().st_size for p in weight_files if p.is_file()),
        context_length=int(model_cfg.get("context_length", 0)),
        vocab_size=int(model_cfg.get("vocab_size", 0)),
        hidden_size=int(dec.get("hidden_size", 0)),
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_size=head_size,
        kv_bytes_per_token=kv_bytes,
        chat_template=folder.chat_template() is not None,
        files=[str(p.relative_to(folder.path)) for p in files],
    )


_fingerprints: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_fingerprint_lock = threading.Lock()


def fingerprint(path: Path | str) -> str:
    """Content hash of a model folder, cheap enough to call per run.

    sha256 over: every file's relative name and size, plus the full bytes of
    ``genai_config.json`` and of the graph file it names (with external data, a few MB at
    most). The external weight files are represented by their sizes only: rewriting weights
    in place at the same size is the one change this does not see. Cached per folder while no
    file's name, size or mtime changes.
    """
    folder = open_model_folder(path)
    entries = []
    for p in sorted(folder.path.rglob("*")):
        if p.is_file():
            st = p.stat()
            entries.append((str(p.relative_to(folder.path)), st.st_size, st.st_mtime_ns))
    key = (str(folder.path.resolve()), tuple(entries))
    with _fingerprint_lock:
        cached = _fingerprints.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, size, _mtime in entries:
        digest.update(f"{name}\0{size}\n".encode())
    for p in (folder.path / CONFIG_FILE, folder.model_file):
        file_hash = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                file_hash.update(block)
        digest.update(file_hash.digest())
    result = digest.hexdigest()[:16]
    with _fingerprint_lock:
        _fingerprints[key] = result
    return result


def clear_output_folder(out_dir: Path) -> None:
    """Make ``out_dir`` an empty folder, replacing only what is safe to replace: nothing, an empty
    folder, or an earlier model folder. Anything else (``models tiny .`` in a project) is refused,
    never deleted."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ModelFolderError(str(out_dir), "exists and is not a folder")
        entries = list(out_dir.iterdir())
        if entries and not (out_dir / "genai_config.json").is_file():
            raise ModelFolderError(
                str(out_dir),
                "exists, is not empty and is not a model folder: choose a new or empty folder",
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
