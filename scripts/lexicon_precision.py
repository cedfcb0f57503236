"""How often each lexicon entry names the right task type, on one source of the public bench data.

A lexicon entry becomes a keyword marker (a feature weighted 3) and a one-line training example of
its family, so an entry that fires on requests of other types teaches the classifier a wrong
prior. For each entry this prints the requests of ``--source`` whose user message contains it
(after ``normalize``; CJK entries match anywhere, others as the lexicon matches them) and the
share labeled with the entry's family, and lists those that fire on at least ``--min-hits``
requests and are right on fewer than half: the candidates to remove.

    python scripts/lexicon_precision.py --source belle_eval --cjk-only

The lexicon's CJK entries were pruned this way on BELLE (see README, "The classifier on public
labeled requests"); AlignBench and MOSS, Chinese sources not used to prune, are the check.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from classifiers.features import CJK, Lexicon, default_lexicon, normalize, split_messages

DATA = Path(os.environ.get("PLANNER_BENCH_DATA", Path(__file__).parent.parent / "bench" / "data"))


def entry_precision(
    rows: list[dict], lexicon: Lexicon, cjk_only: bool
) -> list[tuple[str, str, int, float]]:
    """(family, entry, hits, precision) of every entry that fires on ``rows``."""
    texts = [normalize(split_messages(r["messages"])[1]) for r in rows]
    out = []
    for family in lexicon.families:
        for entry in lexicon.raw_entries(family):
            if cjk_only and not CJK.search(entry):
                continue
            one = Lexicon({family: [entry]}, lexicon.version)
            hits = [r["task_type"] for r, t in zip(rows, texts, strict=True) if one.match(t)]
            if hits:
                out.append((family, entry, len(hits), sum(h == family for h in hits) / len(hits)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="a source name of the bench data")
    parser.add_argument("--data", type=Path, default=DATA / "public_requests.jsonl.gz")
    parser.add_argument("--min-hits", type=int, default=5)
    parser.add_argument(
        "--cjk-only",
        action="store_true",
        help="only the entries the lexicon matches anywhere (CJK, kana, hangul)",
    )
    args = parser.parse_args()
    with gzip.open(args.data, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rows = [r for r in rows if r["source"] == args.source]
    if not rows:
        raise SystemExit(f"{args.data}: no requests of source {args.source!r}")
    found = entry_precision(rows, default_lexicon(), args.cjk_only)
    for family, entry, hits, precision in found:
        print(f"{family:16} {entry:20} {hits:5} {precision:.2f}")
    weak = [(f, e, n, p) for f, e, n, p in found if n >= args.min_hits and p < 0.5]
    print(
        f"\n{len(rows)} requests of {args.source}; right on fewer than half of at least "
        f"{args.min_hits}: " + ", ".join(f"{e} ({f}, {p:.2f} of {n})" for f, e, n, p in weak)
    )


if __name__ == "__main__":
    main()
