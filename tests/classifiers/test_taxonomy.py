"""The taxonomy as data: the shipped default, aliases, and JSON/TOML overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifiers import TaxonomyError, load_taxonomy

DEFAULT = (
    "classification",
    "extraction",
    "summarization",
    "rewrite",
    "closed_qa",
    "open_qa",
    "brainstorming",
    "text_generation",
    "chatbot",
    "code",
    "reasoning",
    "other",
)


def test_default_taxonomy_has_the_twelve_types_with_descriptions_and_tiers() -> None:
    tax = load_taxonomy()
    assert tax.names == DEFAULT
    assert all(t.description for t in tax.types)
    assert {t.tier_prior for t in tax.types} <= {"local", "relay", "production"}
    assert tax.get("code").tier_prior == "production"
    assert tax.get("classification").tier_prior == "local"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Closed QA", "closed_qa"),
        ("closed-qa", "closed_qa"),
        (" CODE ", "code"),
        ("translation", "rewrite"),
        ("creative_writing", "text_generation"),
        ("information_extraction", "extraction"),
        ("general_qa", "open_qa"),
        ("poetry", None),
        ("", None),
        (None, None),
        (3, None),
    ],
)
def test_normalize_maps_spellings_and_aliases_and_refuses_the_rest(
    raw: object, expected: str | None
) -> None:
    assert load_taxonomy().normalize(raw) == expected


def test_json_override_replaces_the_types(tmp_path: Path) -> None:
    path = tmp_path / "tax.json"
    path.write_text(
        json.dumps(
            {
                "task_types": [
                    {"name": "triage", "description": "Route tickets", "tier_prior": "local"},
                    {"name": "drafting", "description": "Write replies", "tier_prior": "relay"},
                ],
                "aliases": {"Ticket Routing": "triage"},
            }
        )
    )
    tax = load_taxonomy(path)
    assert tax.names == ("triage", "drafting")
    assert tax.normalize("ticket routing") == "triage"
    assert tax.normalize("code") is None
    assert tax.source == str(path)


def test_toml_override(tmp_path: Path) -> None:
    path = tmp_path / "tax.toml"
    path.write_text(
        '[[task_types]]\nname = "faq"\ndescription = "Answer FAQs"\ntier_prior = "local"\n\n'
        '[[task_types]]\nname = "escalation"\ndescription = "Hard cases"\n'
    )
    tax = load_taxonomy(path)
    assert tax.names == ("faq", "escalation")
    assert tax.get("escalation").tier_prior == "production"  # the default prior


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"task_types": []}', "field task_types: must be a non-empty list"),
        ('{"task_types": [{"name": "Bad Name"}]}', "task_types[0].name"),
        ('{"task_types": [{"name": "a", "tier_prior": "cloud"}]}', "task_types[0].tier_prior"),
        ('{"task_types": [{"name": "a"}, {"name": "a"}]}', "appears twice"),
        ('{"task_types": [{"name": "a", "colour": "red"}]}', "unknown key(s) colour"),
        ('{"task_types": [{"name": "a"}], "aliases": {"b": "zzz"}}', "aliases.b"),
    ],
)
def test_malformed_override_is_one_clear_error_naming_file_and_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "tax.json"
    path.write_text(content)
    with pytest.raises(TaxonomyError) as info:
        load_taxonomy(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_override_file(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="taxonomy file not found"):
        load_taxonomy(tmp_path / "nope.json")
