"""INT8 and INT4 variants of a model folder, so a plan can compare them against each other.

``int4``: onnxruntime's ``MatMulNBitsQuantizer`` (round-to-nearest, block-wise, asymmetric by
default; ``accuracy_level`` 4 lets CPU kernels compute in int8, as onnxruntime-genai's own
builder does for ``-p int4 -e cpu``). ``int8``: dynamic quantization to ``MatMulInteger`` of
MatMuls whose right operand is a weight (activations quantized at run time). Only weight
MatMuls change; embeddings, norms and everything else stay as they were. The tokenizer and
configuration files are copied unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import onnx

from planner.errors import ModelFolderError
from planner.models.folder import clear_output_folder, fingerprint, open_model_folder
from planner.models.tiny import save_onnx

Precision = Literal["int8", "int4"]
CARD_FILE = "planner_model.json"
QUANTIZED_OPS = {"MatMulNBits", "MatMulInteger", "QLinearMatMul", "GatherBlockQuantized"}


class _DropPreprocessHint(logging.Filter):
    """onnxruntime logs a 'consider pre-processing' hint on the root logger for every model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_graph(
    model: onnx.ModelProto, to: Precision, block_size: int = 32, accuracy_level: int = 4
) -> onnx.ModelProto:
    """The quantized graph (weights in memory)."""
    if to == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=block_size,
            is_symmetric=False,
            accuracy_level=accuracy_level,
        )
        quantizer.process()
        return quantizer.model.model
    if to == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="planner-q8-") as tmp:
            src = Path(tmp) / "in.onnx"
            dst = Path(tmp) / "out.onnx"
            onnx.save_model(model, str(src), save_as_external_data=True, location="in.onnx.data")
            root = logging.getLogger()
            hush = _DropPreprocessHint()
            root.addFilter(hush)
            try:
                quantize_dynamic(
                    str(src),
                    str(dst),
                    op_types_to_quantize=["MatMul"],
                    per_channel=False,
                    weight_type=QuantType.QInt8,
                    extra_options={"MatMulConstBOnly": True},
                    use_external_data_format=True,
                )
            finally:
                root.removeFilter(hush)
            return onnx.load(str(dst), load_external_data=True)
    raise ValueError(f"unknown precision {to!r}: expected int8 or int4")


def quantize_model_folder(
    src: Path | str,
    out: Path | str,
    to: Precision,
    block_size: int = 32,
    accuracy_level: int = 4,
) -> Path:
    """Writes a quantized copy of the folder ``src`` to ``out`` (replaced if it exists)."""
    folder = open_model_folder(src)
    out_dir = Path(out)
    if out_dir.resolve() == folder.path.resolve():
        raise ModelFolderError(str(out_dir), "output folder must differ from the source")
    if to not in ("int8", "int4"):
        raise ModelFolderError(str(out_dir), f"unknown precision {to!r}: expected int8 or int4")
    if block_size < 16 or block_size & (block_size - 1):
        raise ModelFolderError(str(out_dir), f"block size {block_size}: a power of two >= 16")
    try:
        model = onnx.load(str(folder.model_file), load_external_data=True)
    except Exception as exc:
        raise ModelFolderError(str(folder.model_file), f"cannot load the graph: {exc}") from exc
    external = {
        entry.value
        for init in onnx.load(str(folder.model_file), load_external_data=False).graph.initializer
        for entry in init.external_data
        if entry.key == "location"
    }
    done = sorted({n.op_type for n in model.graph.node} & QUANTIZED_OPS)
    if done:
        raise ModelFolderError(
            str(folder.path),
            f"already quantized ({', '.join(done)}): quantize the float model instead",
        )
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantized = quantize_graph(model, to, block_size=block_size, accuracy_level=accuracy_level)

    clear_output_folder(out_dir)
    graph_name = folder.model_file.relative_to(folder.path)
    skip = {str(graph_name), *external}
    for item in sorted(folder.path.rglob("*")):
        rel = item.relative_to(folder.path)
        if item.is_file() and str(rel) not in skip:
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, out_dir / rel)
    (out_dir / graph_name).parent.mkdir(parents=True, exist_ok=True)
    save_onnx(quantized, (out_dir / graph_name).parent, graph_name.name)

    card_path = out_dir / CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card["quantized"] = {
        "to": to,
        "block_size": block_size if to == "int4" else None,
        "accuracy_level": accuracy_level if to == "int4" else None,
        "method": "MatMulNBits (RTN, asymmetric)" if to == "int4" else "dynamic MatMulInteger",
        "source_fingerprint": fingerprint(folder.path),
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return out_dir
