"""Local models as onnxruntime-genai folders.

- :mod:`planner.models.folder` — checking a folder, describing it (parameters, KV cache per
  token), fingerprinting it;
- :mod:`planner.models.runtime` — one folder loaded for generation (chat template, decoding,
  peak memory), shared by the local replay backend and the model server;
- :mod:`planner.models.quantize` — INT8/INT4 variants of a folder;
- :mod:`planner.models.importer` — a GGUF file, a Hugging Face checkpoint or a genai folder into
  genai folders (``models import``), converting with ``convert_checkpoint.py``, a script of the
  build environment (``build-requirements.txt``: torch, transformers) that is never imported;
- :mod:`planner.models.devices` — device tiers: does a model fit, how fast would it run there;
- :mod:`planner.models.server` — a folder behind an OpenAI-compatible HTTP API, answering with an
  engine (:mod:`planner.models.engines`), locked down by :mod:`planner.models.guards` (loopback,
  body and in-flight caps), with injectable faults for tests (:mod:`planner.models.faults`);
- :mod:`planner.models.tiny`, :mod:`planner.models.tiny_tokenizer` — small decoders built with
  ``onnx.helper`` for tests, benches and the demo.

May import: the ``planner`` root modules only.
"""
