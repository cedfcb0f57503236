"""`migration-planner models ...`: Inspect, build and quantize local onnxruntime-genai model folders."""

from __future__ import annotations

from flows.cli_common import new_app

app = new_app("Inspect, build and quantize local onnxruntime-genai model folders.")
