"""Run the benchmarks: ``python -m bench [name ...] [--json FILE]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> int:
    names = sorted(
        m.name.removesuffix("_bench")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.endswith("_bench")
    )
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "only", nargs="*", help=f"benchmarks to run (default: all): {', '.join(names)}"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    results: dict[str, object] = {}
    for name in args.only or names:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}_bench")
        results[name] = module.run()
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
