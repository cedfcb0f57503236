"""Errors raised by the planner package.

PlannerError                    root: anything the planner cannot do
├── ConfigError                 planner.toml missing or malformed, or a field out of range
├── ModelFolderError            not an onnxruntime-genai model folder (names the missing file)
├── ModelImportError            a model cannot be imported (names the file: missing, not a model,
│                               unsupported architecture, the build environment or builder failed)
├── BackendError                a whole replay backend cannot go on
│   ├── AuthError               401/403: names the candidate and its key's env var
│   ├── CircuitOpenError        too many consecutive failures; the candidate is stopped
│   └── BudgetExceeded          the run's cost cap would be exceeded; work done so far is saved
├── CompletionError             one judge/annotator completion failed (that answer is lost)
└── PlanError                   the evidence cannot support a plan (no replays, no scores)

A failure of one sample is data (``ReplayResult.error_kind``), never one of these.
"""

from __future__ import annotations


class PlannerError(Exception):
    """Root of every error the planner raises."""


class ConfigError(PlannerError):
    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ModelFolderError(PlannerError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelImportError(PlannerError):
    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class BackendError(PlannerError):
    def __init__(self, candidate: str, reason: str) -> None:
        self.candidate = candidate
        self.reason = reason
        super().__init__(f"candidate {candidate!r}: {reason}")


class AuthError(BackendError):
    pass


class CircuitOpenError(BackendError):
    pass


class BudgetExceeded(BackendError):
    pass


class PlanError(PlannerError):
    pass


class CompletionError(PlannerError):
    """One completion failed (``kind`` is the replay error kind: timeout, rate_limited, ...).

    Not a :class:`planner.errors.BackendError`: those stop the caller (auth, circuit, budget),
    while this one loses one answer and the caller goes on.
    """

    def __init__(self, candidate: str, kind: str, message: str) -> None:
        super().__init__(f"candidate {candidate!r}: {kind}: {message}")
        self.candidate = candidate
        self.kind = kind
        self.reason = message
