"""Errors raised by the planner package.

PlannerError                    root: anything the planner cannot do
├── ConfigError                 planner.toml missing or malformed, or a field out of range
├── ModelFolderError            not an onnxruntime-genai model folder (names the missing file)
├── ModelImportError            a model cannot be imported (names the file: missing, not a model,
│                               unsupported architecture, the build environment or builder failed)
├── ModelRuntimeError           a loaded model could not run one request (names the folder, the fix)
│   └── ModelMemoryError        its KV cache and buffers do not fit: the bytes asked and available
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


class ModelRuntimeError(PlannerError):
    """A loaded model folder failed on one request; the next request starts clean.

    ``fix`` says what the user can change (empty when there is nothing to say)."""

    def __init__(self, path: str, reason: str, fix: str = "") -> None:
        self.path = path
        self.reason = reason
        self.fix = fix
        super().__init__(f"{path}: {reason}" + (f"; {fix}" if fix else ""))


class ModelMemoryError(ModelRuntimeError):
    """A request's KV cache and prefill buffers need more memory than is available: refused
    before onnxruntime-genai tries to allocate it (which can take a minute and the OOM killer),
    or reported when the runtime itself could not allocate."""

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        asked_bytes: int,
        available_bytes: int,
        max_length: int,
        batch_size: int = 1,
        fix: str = "",
    ) -> None:
        self.asked_bytes = asked_bytes
        self.available_bytes = available_bytes
        self.max_length = max_length
        self.batch_size = batch_size
        super().__init__(path, reason, fix)


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
