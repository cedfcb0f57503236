"""onnxruntime-genai model folders: checking one, describing it, and fingerprinting its content.

A folder is ``genai_config.json`` + the decoder graph it names (``model.onnx``, usually with its
weights as external data beside it) + the tokenizer (``tokenizer.json`` or ``tokenizer.model``,
and ``tokenizer_config.json``, which onnxruntime-genai requires and where the chat template
lives). :func:`open_model_folder` names the first missing piece in a
:class:`planner.errors.ModelFolderError`; :func:`inspect_model` reads the graph's structure
(its weights only where a shared tensor must be told from a copy) to report parameters and
quantization; :func:`fingerprint` hashes every byte of the folder, remembering each file's digest
by its size, times and inode.

Parameters count each learned tensor once. The onnxruntime-genai builder's INT8 models keep a
tied embedding twice (a float table for the Gather, an 8-bit copy for the head's MatMulNBits);
the copy is counted once (``ModelInfo.duplicate_parameters`` says how many were left out), known
from ``import_info.json``'s ``tie_word_embeddings`` or, without it, by dequantizing a few rows
of the head and comparing them with the table (within one quantization step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

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
_NUMPY_FLOATS: dict[int, Any] = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}
IMPORT_INFO = "import_info.json"
TIE_CHECK_ROWS = 16  # rows of a suspected copy dequantized and compared


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
    # logits of one prompt position (the prefill returns them for every position: vocab x dtype)
    logits_bytes_per_token: int = 0
    duplicate_parameters: int = 0  # a shared tensor's second copy, not counted in parameters

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
    duplicate = _duplicated_embedding(folder, graph, inits)
    params -= duplicate
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
    logits_dtype = TensorProto.FLOAT
    for value in graph.output:
        if value.name == "logits":
            logits_dtype = value.type.tensor_type.elem_type
    vocab = int(model_cfg.get("vocab_size", 0))

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
        vocab_size=vocab,
        hidden_size=int(dec.get("hidden_size", 0)),
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_size=head_size,
        kv_bytes_per_token=kv_bytes,
        chat_template=folder.chat_template() is not None,
        files=[str(p.relative_to(folder.path)) for p in files],
        logits_bytes_per_token=vocab * _KV_BYTES.get(logits_dtype, 4),
        duplicate_parameters=duplicate,
    )


def _tied_flag(folder: ModelFolder) -> bool | None:
    """``tie_word_embeddings`` as the import recorded it (None: not recorded)."""
    try:
        info = json.loads((folder.path / IMPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tied = info.get("tie_word_embeddings") if isinstance(info, dict) else None
    return tied if isinstance(tied, bool) else None


def _duplicated_embedding(
    folder: ModelFolder, graph: onnx.GraphProto, inits: dict[str, TensorProto]
) -> int:
    """Parameters stored twice: a float Gather table [V, H] beside a MatMulNBits head with
    N = V and K = H holding the same weights (counted in both places above)."""
    heads = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and len(node.input) > 2 and node.input[1] in inits:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            heads[(int(attrs.get("N", 0)), int(attrs.get("K", 0)))] = (node, attrs)
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if table is None or len(table.dims) != 2 or table.data_type not in _NUMPY_FLOATS:
            continue
        vocab, hidden = int(table.dims[0]), int(table.dims[1])
        head = heads.get((vocab, hidden))
        if head is None:
            continue
        tied = _tied_flag(folder)
        if tied is None:
            tied = _same_weights(folder, table, head[0], head[1], inits)
        if tied:
            return vocab * hidden
    return 0


def _rows(folder: ModelFolder, tensor: TensorProto, dtype: Any, rows: list[int]) -> np.ndarray:
    """Some rows (first axis) of an initializer, read from its external file without loading
    the rest."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return np.asarray(numpy_helper.to_array(tensor))[rows]
    ext = {e.key: e.value for e in tensor.external_data}
    where = folder.model_file.parent / ext["location"]
    shape = tuple(int(d) for d in tensor.dims)
    data = np.memmap(where, dtype=dtype, mode="r", offset=int(ext.get("offset", 0)), shape=shape)
    return np.array(data[rows])


def _same_weights(
    folder: ModelFolder,
    table: TensorProto,
    head: onnx.NodeProto,
    attrs: dict[str, Any],
    inits: dict[str, TensorProto],
) -> bool:
    """Whether a few dequantized rows of the head equal the table's within one quantization
    step (an untied head differs by far more)."""
    bits, block = int(attrs.get("bits", 4)), int(attrs.get("block_size", 32))
    vocab, hidden = int(table.dims[0]), int(table.dims[1])
    rows = sorted({int(i) for i in np.linspace(0, vocab - 1, TIE_CHECK_ROWS)})
    quant, scales = inits[head.input[1]], inits.get(head.input[2])
    zero_points = inits.get(head.input[3]) if len(head.input) > 3 and head.input[3] else None
    if scales is None or zero_points is not None or quant.data_type != TensorProto.UINT8:
        return False  # a layout not checked here: count both
    try:
        floats = _rows(folder, table, _NUMPY_FLOATS[table.data_type], rows).astype(np.float32)
        packed = _rows(folder, quant, np.uint8, rows).reshape(len(rows), -1)
        scale = _rows(folder, scales, np.float32, rows).reshape(len(rows), -1)
    except (OSError, ValueError, KeyError):
        return False
    if bits not in (4, 8):
        return False
    q = np.stack([packed & 0x0F, packed >> 4], -1).reshape(len(rows), -1) if bits == 4 else packed
    step = np.repeat(scale, block, axis=1)[:, :hidden]
    values = (q[:, : step.shape[1]].astype(np.float32) - 2 ** (bits - 1)) * step
    return bool(np.all(np.abs(values[:, :hidden] - floats) <= np.abs(step) * 1.01 + 1e-8))


# A model folder's fingerprint covers every byte of it. Hashing gigabytes takes seconds, so each
# file's digest is remembered by what the kernel says about it: absolute path, size, mtime,
# ctime and inode. A rewrite changes mtime and ctime (ctime cannot be set back, so even a copy
# that preserves mtime is seen); a replaced file changes the inode. The memory is a JSON file
# (``fingerprint_cache_file``), shared by every process of the user on the machine.
FINGERPRINT_CACHE_VERSION = 1
_CHUNK = 1 << 22
_memo: dict[tuple[str, tuple[tuple[str, int, int, int, int], ...]], str] = {}
_memo_lock = threading.Lock()
_log = logging.getLogger("planner.models")


def fingerprint_cache_file() -> Path:
    """Where file digests are remembered: ``$XDG_CACHE_HOME/migration-planner/fingerprints.json``
    (default ``~/.cache/migration-planner/fingerprints.json``), keyed by absolute path, so a
    read-only model folder is fine and one cache serves every project of the user."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migration-planner" / "fingerprints.json"


@dataclass(frozen=True)
class _Stat:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _Stat:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _load_digests(cache: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != FINGERPRINT_CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_digests(cache: Path, fresh: dict[str, list[Any]]) -> None:
    """Merge ``fresh`` into the cache file (re-read, so other processes' entries stay) and drop
    entries of files that are gone; written beside and renamed, so a reader never sees half."""
    try:
        files = _load_digests(cache)
        files.update(fresh)
        files = {k: v for k, v in files.items() if os.path.exists(k)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(
            json.dumps({"version": FINGERPRINT_CACHE_VERSION, "files": files}, sort_keys=True),
            encoding="utf-8",
        )
        os.replace(tmp, cache)
    except OSError as exc:  # an unwritable cache costs time next run, never a wrong answer
        _log.warning("cannot keep file digests in %s: %s", cache, exc)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fingerprint(path: Path | str, *, cache_file: Path | None = None) -> str:
    """Content hash of a model folder: every file's relative name, size and sha256.

    Any change of any byte (a retrain of the same architecture rewrites the weights at the same
    size) gives another fingerprint, and replays of the old one stop counting. A file's digest
    is reused while its size, mtime, ctime and inode are unchanged (``cache_file``, default
    :func:`fingerprint_cache_file`), so a nightly run reads gigabytes only after they changed.
    """
    folder = open_model_folder(path)
    root = folder.path.resolve()
    entries: list[tuple[str, Path, _Stat]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            entries.append((p.relative_to(root).as_posix(), p, _Stat.of(p)))
    memo_key = (
        str(root),
        tuple((n, s.size, s.mtime_ns, s.ctime_ns, s.inode) for n, _, s in entries),
    )
    with _memo_lock:
        known = _memo.get(memo_key)
    if known is not None:
        return known
    cache = cache_file if cache_file is not None else fingerprint_cache_file()
    stored = _load_digests(cache)
    fresh: dict[str, list[Any]] = {}
    digest = hashlib.sha256()
    for name, p, stat in entries:
        state = [stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode]
        hit = stored.get(str(p))
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == state:
            file_hash = str(hit[4])
        else:
            file_hash = file_digest(p)
            if _Stat.of(p) == stat:  # not written to while it was read
                fresh[str(p)] = [*state, file_hash]
        digest.update(f"{name}\0{stat.size}\0{file_hash}\n".encode())
    if fresh:
        _save_digests(cache, fresh)
    result = digest.hexdigest()[:16]
    with _memo_lock:
        _memo[memo_key] = result
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
