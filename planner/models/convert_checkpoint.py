#!/usr/bin/env python3
"""Converts a llama.cpp GGUF file or a Hugging Face checkpoint into onnxruntime-genai folders.

A script of the build environment (``build-requirements.txt`` beside it: torch CPU, transformers,
gguf, the onnxruntime-genai model builder), shipped inside the package so an installed project can
run it, but never imported by the project: ``migration-planner models import`` (see
:mod:`planner.models.importer`) runs it in that environment as a child process.

    python -I convert_checkpoint.py --source SmolLM2-135M-Instruct.Q4_1.gguf --out OUT \
        --precision int4 --precision int8 [--cache DIR] [--context-cap 4096] [--force]

writes OUT/<precision>/ per precision: model.onnx(.data), genai_config.json, tokenizer.json,
tokenizer_config.json (with the chat template), chat_template.jinja and import_info.json (where the
folder came from). It imports nothing from the project. Why each step:
- GGUF: the builder reads only float GGUF files, so quantized ones are dequantized by transformers'
  GGUF loader; transformers refuses save_pretrained of a GGUF-loaded model, so its state dict goes
  into a plain model built from the same config, which is saved instead.
- The builder runs in a child process (its memory is returned after each precision) with
  HF_HUB_OFFLINE=1 and two patches: Gemma 3's per-layer-type RoPE config under transformers 5 is
  flattened (else KeyError: 'rope_type'), and for checkpoints over 4 GB INT4/INT8 quantization
  streams one weight at a time (the builder's own step needs > 23 GB for a 3.8B model).
- Afterwards: transformers 5 writes tokenizer_class "TokenizersBackend" and keeps the chat template
  only in chat_template.jinja; a classic class is chosen whose encoding by onnxruntime-genai equals
  the `tokenizers` library's, the template is copied into tokenizer_config.json, add_bos_token says
  whether the tokenizer prepends BOS, and the template's end-of-turn tokens join eos_token_id.
- Last, onnxruntime-genai loads each folder and generates 4 tokens.
Progress goes to stderr, one line per step with elapsed seconds; a failure is one line
``convert_checkpoint: error: <what, naming the file>`` and exit status 1.

This module is long because it is one self-contained script (it runs with ``python -I``, so it
cannot import a sibling module): besides the steps above it carries the ~90-line streaming
quantizer that makes a 3.8B-parameter import fit in 24 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PRECISIONS = ("int4", "int8", "fp32")
TOKENIZER_CLASSES = ("GPT2Tokenizer", "LlamaTokenizer", "GemmaTokenizer", "Qwen2Tokenizer")
NOT_CPU_TEXT = {
    "WhisperForConditionalGeneration": "a speech model",
    "PhiMoEForCausalLM": "CUDA only",
}
STREAMING_ABOVE_BYTES = 4e9
SAMPLE_TEXTS = (
    "What is the capital of France?",
    "  two  spaces\tand a tab\n\nnew lines ",
    "naïve café, 日本語, emoji 🙂",
    "def f(x):\n    return x ** 2  # square\n",
)
_STARTED = time.monotonic()


class ConversionError(Exception):
    """A failure the user can act on; its message is printed as the one error line."""


def log(message: str) -> None:
    """One progress line on stderr with the seconds since start (stdout stays clean)."""
    print(f"[convert {time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def source_kind(source: Path) -> str:
    """'gguf' or 'hf'; anything else is a ConversionError naming the path."""
    if not source.exists():
        raise ConversionError(f"{source}: no such file or folder")
    if source.is_file():
        with source.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ConversionError(f"{source}: not a GGUF file (no GGUF magic bytes)")
        return "gguf"
    if (source / "genai_config.json").is_file():
        raise ConversionError(f"{source}: already an onnxruntime-genai folder (copy it, no build)")
    if not (source / "config.json").is_file():
        raise ConversionError(f"{source}: no config.json, not a Hugging Face checkpoint folder")
    if not any(source.glob("*.safetensors")) and not any(source.glob("pytorch_model*.bin")):
        raise ConversionError(f"{source}: no *.safetensors or pytorch_model*.bin weights")
    return "hf"


def check_architecture(arch: str, where: str) -> None:
    """Fails before any heavy work when the installed builder cannot convert ``arch`` (its list is
    read from the builder's source, so a newer onnxruntime-genai brings its own)."""
    import onnxruntime_genai.models.builder as builder_module

    text = Path(str(builder_module.__file__)).read_text(encoding="utf-8")
    supported = set(re.findall(r'architectures\[0\] == "(\w+)"', text)) - set(NOT_CPU_TEXT)
    if arch not in supported:
        why = NOT_CPU_TEXT.get(arch, "not supported by the onnxruntime-genai model builder")
        raise ConversionError(
            f"{where}: architecture {arch} is {why} (supported: {', '.join(sorted(supported))})"
        )


def gguf_to_hf(gguf: Path, hf_dir: Path) -> None:
    """Dequantizes a GGUF file into a float32 Hugging Face folder (model, tokenizer, template)."""
    import gguf as gguf_lib
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    field = gguf_lib.GGUFReader(gguf).fields.get("general.architecture")
    gguf_arch = str(field.contents()) if field is not None else "<none>"
    readable = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if gguf_arch not in readable:
        raise ConversionError(
            f"{gguf}: GGUF architecture {gguf_arch} cannot be read by "
            f"transformers (it reads: {', '.join(readable)})"
        )
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, f"<{config.model_type}>")
    check_architecture(arch, f"{gguf} (GGUF {gguf_arch})")
    log(f"dequantizing {gguf.name} ({arch}, {gguf.stat().st_size / 1e6:.0f} MB) to float32")
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(hf_dir)
    del plain
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(hf_dir)
    (hf_dir / ".complete").touch()
    size = sum(p.stat().st_size for p in hf_dir.iterdir()) / 1e6
    log(f"wrote the Hugging Face folder {hf_dir} ({size:.0f} MB)")


def checkpoint_parameters(folder: Path) -> int | None:
    """Parameters stored in the checkpoint's safetensors headers (tied weights are stored once);
    None for packed (AWQ/GPTQ) or .bin checkpoints, whose stored sizes are not parameters."""
    if "quantization_config" in read_json(folder / "config.json"):
        return None
    total = 0
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total or None


def run_builder(hf_dir: Path, out_dir: Path, precision: str, cache: Path, stream: bool) -> None:
    """Runs the model builder in a child process, its output in a log file in the cache; a
    failure is reported as the builder's last error line."""
    log_path = cache / f"builder-{precision}.log"
    flags = {"-i": hf_dir, "-o": out_dir, "-p": precision, "-e": "cpu", "-c": cache / "builder"}
    cmd = [sys.executable, "-I", str(Path(__file__).resolve()), "--builder-child"]
    cmd += [str(item) for pair in flags.items() for item in pair]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    env["CONVERT_STREAMING_QUANT"] = "1" if stream and precision != "fp32" else "0"
    with log_path.open("w", encoding="utf-8") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    text = log_path.read_text(encoding="utf-8", errors="replace")
    # transformers fills weights missing from the checkpoint with random values and only says so
    # in its load report; the builder would then convert them as if they were the model's own
    bad = re.findall(r"^(\S+)\s*\|\s*(MISSING|MISMATCH)\s*\|", text, re.M)
    if bad:
        listed = ", ".join(f"{name} ({status})" for name, status in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConversionError(
            f"{hf_dir}: the checkpoint's weights do not fit its config.json: {listed}{more} "
            f"(log: {log_path})"
        )
    if code != 0:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
        last = errors[-1] if errors else (lines[-1] if lines else f"exit status {code}")
        if code < 0:
            last = f"killed by signal {-code} (out of memory?)"
        raise ConversionError(
            f"{hf_dir}: the model builder failed for {precision}: {last} (full log: {log_path})"
        )


def builder_child(argv: list[str]) -> None:
    """Child process: the builder's own __main__, with the two patches the module doc names."""
    import runpy

    import transformers

    from_pretrained = transformers.AutoConfig.from_pretrained.__func__  # type: ignore[attr-defined]

    def flat_rope(cls: Any, *args: Any, **kwargs: Any) -> Any:
        config = from_pretrained(cls, *args, **kwargs)
        for part in (config, getattr(config, "text_config", config)):
            rope = getattr(part, "rope_parameters", None)
            if (
                str(getattr(part, "model_type", "")).startswith("gemma3")
                and isinstance(rope, dict)
                and "rope_type" not in rope
                and isinstance(rope.get("full_attention"), dict)
            ):
                full = dict(rope["full_attention"])
                part.rope_parameters = full
                part.rope_theta = full["rope_theta"]
                part.rope_local_base_freq = rope.get("sliding_attention", full)["rope_theta"]
        return config

    transformers.AutoConfig.from_pretrained = classmethod(flat_rope)  # type: ignore[assignment]
    if os.environ.get("CONVERT_STREAMING_QUANT") == "1":
        import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path)
        from builders import base  # type: ignore[import-not-found]

        plain_to_nbits = base.Model.to_nbits
        base.Model.to_nbits = lambda self: streaming_to_nbits(self, plain_to_nbits)
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


def streaming_to_nbits(self: Any, plain: Any) -> Any:
    """The builder's INT4/INT8 step with the same ORT quantizer, one weight at a time: the
    builder's own step first turns the whole model into one fp32 ModelProto (~4 bytes per
    parameter on top of the checkpoint). Output is byte-identical (checked on SmolLM2)."""
    import onnx
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    attrs = self.quant_attrs
    if (
        getattr(self, "quantization_algo", "default") != "default"
        or getattr(self, "int4_customized_weight_config", None)
        or getattr(self, "exact_quant_override_names", None)
    ):
        return plain(self)  # mixed precision or another algorithm: the builder's own path
    print("convert_checkpoint: streaming quantization", file=sys.stderr, flush=True)
    pending = {n: self.model.graph.initializers.pop(n) for n in list(self.model.graph.initializers)}
    skeleton = ir.to_proto(self.model)  # the graph without weight data
    for node in skeleton.graph.node:  # a subgraph (LongRoPE's If) must hold no weight to quantize
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH and any(
                n.op_type in attrs["op_types_to_quantize"] for n in attr.g.node
            ):
                self.model.graph.initializers.update(pending)
                return plain(self)
    quant = MatMulNBitsQuantizer(
        model=skeleton,
        bits=attrs["bits"],
        block_size=attrs["matmul_block_size"],
        is_symmetric=attrs["is_symmetric"],
        accuracy_level=attrs["accuracy_level"],
        nodes_to_exclude=list(attrs["nodes_to_exclude"]),
        algo_config=None,
        quant_format=QuantFormat.QDQ if attrs["use_qdq"] else QuantFormat.QOperator,
        op_types_to_quantize=attrs["op_types_to_quantize"],
    )
    model, graph = quant.model, skeleton.graph  # below: the opset/IR bumps of quant.process()
    if quant.algo_config.quant_format == QuantFormat.QOperator:
        model.set_opset_import("com.microsoft", 1)
    if (
        quant.algo_config.quant_format == QuantFormat.QDQ
        or "Gather" in quant.algo_config.op_types_to_quantize
    ):
        for opset in model.opset_import():
            if opset.domain in (None, "ai.onnx", "") and opset.version < 21:
                model.set_opset_import(opset.domain, 21)
        model.model.ir_version = max(model.model.ir_version, 10)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    new_nodes, new_inits, consumed = [], [], set()
    for node in list(graph.node):
        if (
            node.name in quant.nodes_to_exclude
            or node.op_type not in quant.algo_config.op_types_to_quantize
        ):
            new_nodes.append(node)
            continue
        scratch = onnx.GraphProto()
        taken = [i for i in node.input if i in pending and i not in consumed]
        for name in taken:
            ir.serde.serialize_tensor_into(scratch.initializer.add(), pending[name].const_value)
        out_nodes = quant.node_quantizer.quantize(node, [graph, scratch])
        new_nodes.extend(out_nodes)
        for tensor in scratch.initializer:
            if tensor.name not in pending:  # a quantized tensor: copied out, `scratch` is freed
                new_inits.append(onnx.TensorProto())
                new_inits[-1].CopyFrom(tensor)
        if len(out_nodes) != 1 or out_nodes[0] is not node:
            for name in taken:
                uses[name] -= 1
                if uses[name] == 0 and not any(name in n.input for n in out_nodes):
                    consumed.add(name)
                    pending[name] = None  # frees the float weight
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    for name, value in pending.items():
        if name not in consumed:
            ir.serde.serialize_tensor_into(graph.initializer.add(), value.const_value)
    graph.initializer.extend(new_inits)
    model.clean_initializers()
    self.prepack_matmulnbits_weights(model.model)
    return ir.from_proto(model.model)


def tokenizer_mismatch(folder: Path, texts: list[str]) -> str | None:
    """None when onnxruntime-genai encodes and decodes ``texts`` as the `tokenizers` library
    does (no special tokens added; special tokens skipped when decoding), else the difference."""
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    runtime = og.Tokenizer(str(folder))
    for text in texts:
        want = reference.encode(text, add_special_tokens=False).ids
        got = [int(t) for t in runtime.encode(text)]
        if got != want:
            return f"{text!r} encodes as {got[:8]}..., tokenizers gives {want[:8]}..."
        if runtime.decode(got) != reference.decode(want, skip_special_tokens=True):
            return f"{text!r} does not decode back the same"
    return None


def sample_texts(template: str | None) -> list[str]:
    """Texts to compare the two tokenizers on: plain ones and a chat rendered by the template."""
    texts = list(SAMPLE_TEXTS)
    if template:
        from jinja2 import Template  # a transformers dependency

        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        chat += [{"role": "user", "content": "2+2?"}]
        try:
            render = Template(template).render
            texts.append(render(messages=chat, add_generation_prompt=True, bos_token=""))
        except Exception as exc:  # a template that needs more: the plain texts are checked
            log(f"note: the chat template does not render a sample chat ({exc})")
    return texts


def guess_tokenizer_class(tok_json: dict[str, Any], model_type: str) -> str:
    """The classic class most likely right: byte-level BPE is GPT-2's, SentencePiece-style
    BPE (Metaspace/▁) Llama's or Gemma's; Qwen's has its own pre-tokenizer."""
    if model_type.startswith("qwen"):
        return "Qwen2Tokenizer"
    if "ByteLevel" in json.dumps([tok_json.get("pre_tokenizer"), tok_json.get("decoder")]):
        return "GPT2Tokenizer"
    return "GemmaTokenizer" if model_type.startswith("gemma") else "LlamaTokenizer"


def prepends_bos(tok_json: dict[str, Any], bos: str | None) -> bool:
    """Whether tokenizer.json's post-processor puts the BOS token first (Gemma, Llama)."""
    processor = tok_json.get("post_processor") or {}
    for step in processor.get("processors", [processor]):
        first = (step.get("single") or [{}])[0] if step.get("type") == "TemplateProcessing" else {}
        if bos is not None and first.get("SpecialToken", {}).get("id") == bos:
            return True
    return False


def fix_tokenizer(folder: Path, model_type: str) -> dict[str, Any]:
    """Makes tokenizer_config.json what onnxruntime-genai and the project read (module doc)."""
    config_path, template_path = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    tok_config, tok_json = read_json(config_path), read_json(folder / "tokenizer.json")
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    template = template or tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template:
        tok_config["chat_template"] = template
    bos = tok_config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    tok_config["add_bos_token"] = prepends_bos(tok_json, bos)
    texts = sample_texts(template)
    current = str(tok_config.get("tokenizer_class", "")).removesuffix("Fast")
    candidates = (current, guess_tokenizer_class(tok_json, model_type), *TOKENIZER_CLASSES)
    problems = []
    for name in dict.fromkeys(c for c in candidates if c in TOKENIZER_CLASSES):
        write_json(config_path, {**tok_config, "tokenizer_class": name})
        problem = tokenizer_mismatch(folder, texts)
        if problem is None:
            tok_config["tokenizer_class"] = name
            break
        problems.append(f"{name}: {problem}")
    else:
        raise ConversionError(
            f"{config_path}: onnxruntime-genai tokenizes differently from the tokenizers "
            f"library under every class tried ({problems[0]})"
        )
    write_json(config_path, tok_config)
    if tok_config["add_bos_token"]:
        log(
            f"note: this tokenizer prepends {bos} (add_bos_token); onnxruntime-genai's encode "
            "does not unless told (Tokenizer.update_options(add_special_tokens='true'))"
        )
    return {
        "tokenizer_class": tok_config["tokenizer_class"],
        "add_bos_token": tok_config["add_bos_token"],
        "chat_template": bool(template),
        "eos_token_id": add_end_of_turn_tokens(folder, tok_json, template),
    }


def add_end_of_turn_tokens(
    folder: Path, tok_json: dict[str, Any], template: str | None
) -> list[int]:
    """Adds the special tokens that close a turn in the chat template (<|im_end|>,
    <end_of_turn>, <|end|>, ...) to genai_config.json's eos_token_id, so generation stops there."""
    genai_path = folder / "genai_config.json"
    genai = read_json(genai_path)
    eos = genai["model"].get("eos_token_id", [])
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    for token in tok_json.get("added_tokens", []):
        content = str(token.get("content", ""))
        if (
            template
            and token.get("special")
            and re.search(r"end|eot", content, re.I)
            and content in template
            and int(token["id"]) not in eos_ids
        ):
            eos_ids.append(int(token["id"]))
            log(f"added end-of-turn token {content} ({token['id']}) to eos_token_id")
    genai["model"]["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    write_json(genai_path, genai)
    return eos_ids


def cap_context(folder: Path, cap: int | None) -> dict[str, int]:
    """Lowers context_length and search.max_length to ``cap``: onnxruntime-genai reserves the KV
    cache of max_length up front (Phi-4-mini's 131,072 tokens: 34 GB)."""
    path = folder / "genai_config.json"
    genai = read_json(path)
    native = int(genai["model"]["context_length"])
    if cap is not None and cap < native:
        genai["model"]["context_length"] = cap
        genai.setdefault("search", {})["max_length"] = cap
        write_json(path, genai)
        log(f"context capped to {cap} tokens (the model's own is {native})")
    return {"context_length": min(native, cap or native), "native_context_length": native}


def smoke_test(folder: Path) -> float:
    """Loads the folder with onnxruntime-genai and generates 4 greedy tokens; returns seconds.
    max_length is at least the sliding window: a smaller windowed cache is refused
    ("KV cache capacity (N) must be at least local_window_size")."""
    import onnxruntime_genai as og

    started = time.monotonic()
    model_cfg = read_json(folder / "genai_config.json")["model"]
    window = model_cfg["decoder"].get("sliding_window") or {}
    window_size = int(window.get("window_size", 0))
    if window.get("layers") == [] or window_size >= int(model_cfg["context_length"]):
        window_size = 0  # a window on no layer (Phi-4: 262144, layers []) reserves nothing
    try:
        config = og.Config(str(folder))
        config.overlay(
            json.dumps(
                {
                    "model": {
                        "decoder": {
                            "session_options": {"intra_op_num_threads": min(2, os.cpu_count() or 1)}
                        }
                    }
                }
            )
        )
        model = og.Model(config)
        ids = og.Tokenizer(model).encode("The capital of France is")
        params = og.GeneratorParams(model)
        params.set_search_options(
            do_sample=False, min_length=len(ids) + 4, max_length=max(len(ids) + 4, window_size)
        )
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        for _ in range(4):
            generator.generate_next_token()
    except Exception as exc:  # og raises RuntimeError/OSError with the runtime's message
        raise ConversionError(
            f"{folder}: onnxruntime-genai cannot run the built model: {type(exc).__name__}: {exc}"
        ) from exc
    return time.monotonic() - started


def prepare_checkpoint(source: Path, kind: str, sha: str, cache: Path) -> tuple[Path, float]:
    """The Hugging Face folder to build from (a GGUF is dequantized once per cache) and the
    seconds dequantizing took."""
    if kind == "hf":
        arch = (read_json(source / "config.json").get("architectures") or ["<none>"])[0]
        check_architecture(str(arch), str(source / "config.json"))
        return source, 0.0
    hf_dir = cache / f"hf-{sha[:16]}"
    if (hf_dir / ".complete").is_file():
        log(f"reusing the dequantized folder {hf_dir}")
        return hf_dir, 0.0
    shutil.rmtree(hf_dir, ignore_errors=True)
    started = time.monotonic()
    try:
        gguf_to_hf(source, hf_dir)
    except ConversionError:
        raise
    except Exception as exc:  # transformers/gguf errors: name the file
        shutil.rmtree(hf_dir, ignore_errors=True)
        raise ConversionError(
            f"{source}: cannot load the GGUF file: {type(exc).__name__}: {exc}"
        ) from exc
    return hf_dir, time.monotonic() - started


def convert(args: argparse.Namespace) -> None:
    """The whole conversion; OUT/<precision> appears only once it is complete and checked."""
    source, out = args.source.resolve(), args.out.resolve()
    kind = source_kind(source)
    precisions = list(dict.fromkeys(args.precision or ["int4"]))
    taken = [out / p for p in precisions if (out / p).exists()]
    if taken and not args.force:
        raise ConversionError(f"{taken[0]}: already exists (pass --force to replace it)")
    if args.context_cap is not None and args.context_cap < 256:
        raise ConversionError(f"--context-cap {args.context_cap}: must be at least 256")
    log(f"hashing {source.name}")
    sha = sha256_of(source)
    cache = args.cache.resolve() if args.cache else Path(tempfile.mkdtemp(prefix="convert-"))
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        hf_dir, prepare_s = prepare_checkpoint(source, kind, sha, cache)
        hf_config = read_json(hf_dir / "config.json")
        weights = sum(
            p.stat().st_size for p in hf_dir.iterdir() if p.suffix in (".safetensors", ".bin")
        )
        stream = args.low_memory or weights > STREAMING_ABOVE_BYTES
        if stream:
            log(f"weights {weights / 1e9:.1f} GB: INT4/INT8 quantized one weight at a time")
        for precision in precisions:
            started = time.monotonic()
            partial = out / f".{precision}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            log(f"building {precision} with the onnxruntime-genai model builder")
            run_builder(hf_dir, partial, precision, cache, stream)
            log(f"built {precision} in {time.monotonic() - started:.1f}s; fixing tokenizer files")
            details = {
                **fix_tokenizer(partial, str(hf_config.get("model_type", ""))),
                **cap_context(partial, args.context_cap),
            }
            log(f"{precision}: loads and generates ({smoke_test(partial):.1f}s)")
            write_json(
                partial / "import_info.json",
                {
                    "source": source.name,
                    "source_kind": kind,
                    "source_sha256": sha,
                    "precision": precision,
                    "execution_provider": "cpu",
                    "architecture": (hf_config.get("architectures") or [None])[0],
                    "checkpoint_parameters": checkpoint_parameters(hf_dir),
                    "tie_word_embeddings": bool(hf_config.get("tie_word_embeddings", False)),
                    "builder": "onnxruntime_genai.models.builder",
                    "builder_version": metadata.version("onnxruntime-genai"),
                    "transformers_version": metadata.version("transformers"),
                    "torch_version": metadata.version("torch"),
                    "streaming_quantization": stream,
                    **details,
                    "dequantize_seconds": round(prepare_s, 1),
                    "seconds": round(time.monotonic() - started, 1),
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                },
            )
            shutil.rmtree(out / precision, ignore_errors=True)
            partial.rename(out / precision)
            size = sum(p.stat().st_size for p in (out / precision).iterdir()) / 1e6
            log(
                f"{precision}: {out / precision} ({size:.0f} MB) in "
                f"{time.monotonic() - started:.1f}s"
            )
    except BaseException:
        if not args.cache:  # keep the builder logs an error names; drop the rest
            for item in cache.iterdir():
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                elif item.suffix != ".log":
                    item.unlink()
        raise
    else:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        for leftover in out.glob(".*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert a GGUF file or a Hugging Face checkpoint folder into "
        "onnxruntime-genai model folders, one per precision (OUT/<precision>)."
    )
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="a .gguf file (quantized ones are dequantized) or a Hugging Face "
        "checkpoint folder (config.json + safetensors; AWQ/GPTQ included)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--precision",
        action="append",
        choices=PRECISIONS,
        help="repeat for several (default: int4)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the dequantized checkpoint and the builder logs here for reuse "
        "(default: a temporary folder, deleted at the end)",
    )
    parser.add_argument(
        "--context-cap",
        type=int,
        metavar="N",
        help="cap context_length and search.max_length in genai_config.json",
    )
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="quantize one weight at a time (automatic above 4 GB of weights)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing OUT/<precision>")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--builder-child"]:
        builder_child(argv[1:])
        return 0
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: progress is ours
    try:
        convert(args)
    except ConversionError as exc:
        print(f"convert_checkpoint: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert_checkpoint: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a library failing somewhere unforeseen: still one line
        print(
            f"convert_checkpoint: error: {args.source}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
