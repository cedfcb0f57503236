"""The planner's domain: replaying requests through candidates, local models, evaluating the
answers, and the plan's report, in rooms of one concern each.

Root modules, importable by every room: :mod:`planner.errors` (the error tree),
:mod:`planner.settings` (``planner.toml`` as one typed object), :mod:`planner.messages` (the one
message flattener and token estimate), :mod:`planner.stats` (the one percentile) and
:mod:`planner.redact` (masking personal data and credentials in text).

Rooms, lowest first; a room imports only the root and the rooms before it:

- :mod:`planner.models` — onnxruntime-genai model folders: checking, fingerprints, the loaded
  runtime, quantization, device tiers, the OpenAI-compatible model server, tiny test models;
- :mod:`planner.replay` — the replay protocol, the relay client and its wire format, rate limits
  and budget, the replay engine and cache keys, the local backend, shards (imports ``models``);
- :mod:`planner.evaluate` — scorers and the judge, evidence and intervals, the decision rule,
  the projection and the risks (imports ``models``);
- :mod:`planner.runs` — run folders and ids, the run history, run diffs, the webhook (imports
  ``replay.wire``);
- :mod:`planner.report` — the HTML pages, charts and the gateway configs (imports ``evaluate``
  and ``runs``).

``planner`` does not import ``warehouse``, ``classifiers``, ``pipeline``, ``flows`` or Prefect.
"""
