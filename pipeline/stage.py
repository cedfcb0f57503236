"""How a composition runs its steps: one function, two ways of calling it.

A pipeline function that has several steps takes a ``stage`` argument and calls each step as
``stage(name, fn, *args)``. The CLI and the tests pass :func:`direct` (call it now); the Prefect
flows pass a runner that records each step as a task of the flow run. The composition itself is
written once, here, and the flows stay thin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Stage(Protocol):
    """Runs ``fn(*args, **kwargs)`` as the step ``name`` and returns its value."""

    def __call__(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


def direct(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run the step now, in this process (no recording)."""
    return fn(*args, **kwargs)


Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A progress sink that drops the lines."""
    return None
