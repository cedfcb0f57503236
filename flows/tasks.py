"""Pipeline steps as Prefect tasks: the ``stage`` runner the flows hand to :mod:`pipeline`.

A step's arguments are passed through :func:`prefect.utilities.annotations.quote`: they are plain
values (never futures), and Prefect would otherwise walk every element of a collection looking
for futures before each task (seconds on a traffic table of 100k requests). No caching and no
retries: the steps are deterministic given the warehouse, and the relay's retries live in the
relay client and the replay flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

T = TypeVar("T")


def as_task(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` as the task ``name`` of the current flow run and return its value."""
    step = task(name=name, cache_policy=NO_CACHE)(fn)
    return step(*(quote(a) for a in args), **{k: quote(v) for k, v in kwargs.items()})
