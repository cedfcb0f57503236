"""The task types the plan is made per: names, descriptions and a default tier prior, as data.

The shipped taxonomy is ``classifiers/data/taxonomy.json``; a JSON or TOML file of the same shape
replaces it (``task_types`` is a list of ``{name, description, tier_prior}``; ``aliases`` maps
other spellings, e.g. public data sets' category names, onto task types). Labels are normalized
(case, spaces, hyphens) before lookup, so "Closed QA" and "closed-qa" both mean ``closed_qa``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from classifiers.errors import TaxonomyError

TIERS: tuple[str, ...] = ("local", "relay", "production")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    tier_prior: str  # 'local' | 'relay' | 'production': where this type usually can go


@dataclass(frozen=True)
class Taxonomy:
    """An ordered set of task types plus aliases; ``source`` says where it was read from."""

    types: tuple[TaskType, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    version: str = "custom"
    source: str = "built-in"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.types)

    def get(self, name: str) -> TaskType:
        for task in self.types:
            if task.name == name:
                return task
        raise TaxonomyError(self.source, f"no task type {name!r} (known: {', '.join(self.names)})")

    def normalize(self, label: object) -> str | None:
        """The task type a raw label means, or None when it is outside the taxonomy."""
        if not isinstance(label, str):
            return None
        key = re.sub(r"[\s\-/]+", "_", label.strip().lower())
        if key in self.names:
            return key
        target = self.aliases.get(key)
        return target if target in self.names else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "task_types": [vars(t).copy() for t in self.types],
            "aliases": dict(self.aliases),
        }


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TaxonomyError(str(path), "taxonomy file not found")
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise TaxonomyError(str(path), "not UTF-8 text") from exc
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise TaxonomyError(str(path), f"not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise TaxonomyError(str(path), "must be an object with a 'task_types' list")
    return data


def taxonomy_from_dict(data: dict[str, Any], source: str) -> Taxonomy:
    """Validate a parsed taxonomy; every problem names the source and the field."""
    entries = data.get("task_types")
    if not isinstance(entries, list) or not entries:
        raise TaxonomyError(source, "field task_types: must be a non-empty list")
    types: list[TaskType] = []
    for i, entry in enumerate(entries):
        where = f"field task_types[{i}]"
        if not isinstance(entry, dict):
            raise TaxonomyError(source, f"{where}: must be an object")
        unknown = set(entry) - {"name", "description", "tier_prior"}
        if unknown:
            raise TaxonomyError(source, f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TaxonomyError(source, f"{where}.name: {name!r} is not a snake_case name")
        if name in {t.name for t in types}:
            raise TaxonomyError(source, f"{where}.name: {name!r} appears twice")
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise TaxonomyError(source, f"{where}.description: must be a string")
        tier = entry.get("tier_prior", "production")
        if tier not in TIERS:
            raise TaxonomyError(source, f"{where}.tier_prior: {tier!r} is not one of {TIERS}")
        types.append(TaskType(name, description, tier))
    raw_aliases = data.get("aliases", {})
    if not isinstance(raw_aliases, dict):
        raise TaxonomyError(source, "field aliases: must be an object")
    names = {t.name for t in types}
    aliases: dict[str, str] = {}
    for alias, target in raw_aliases.items():
        if target not in names:
            raise TaxonomyError(source, f"field aliases.{alias}: {target!r} is not a task type")
        aliases[re.sub(r"[\s\-/]+", "_", str(alias).strip().lower())] = target
    return Taxonomy(tuple(types), aliases, str(data.get("version", "custom")), source)


def load_taxonomy(path: Path | str | None = None) -> Taxonomy:
    """The shipped taxonomy, or the one in ``path`` (JSON, or TOML by suffix) instead."""
    if path is None:
        text = resources.files("classifiers").joinpath("data/taxonomy.json").read_text("utf-8")
        return taxonomy_from_dict(json.loads(text), "built-in")
    file = Path(path)
    return taxonomy_from_dict(_read(file), str(file))
