#!/usr/bin/env python3
"""The README's benchmark tables, generated from a ``bench.json`` written by ``mlink bench``.

    .venv/bin/python scripts/bench_tables.py docs/bench/native/bench.json            # print the tables
    .venv/bin/python scripts/bench_tables.py docs/bench/native/bench.json --readme README.md --name native

With ``--readme``, the block between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``
is replaced by the tables, so the numbers in the README always come from a file in the repo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.app.bench import summarize  # noqa: E402
from pipeline.app.bench_report import format_tables  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json", type=Path)
    ap.add_argument("--readme", type=Path, help="replace the marked block in this file instead of printing")
    ap.add_argument("--name", default="main", help="the block's name in the markers")
    ap.add_argument("--prior-from", type=Path, help="take prior_accuracy from this bench.json (same frames) when the file lacks it")
    a = ap.parse_args(argv)
    try:
        res = json.loads(a.bench_json.read_text())
    except (OSError, ValueError) as exc:
        print(f"bench_tables: error: {a.bench_json}: {exc}", file=sys.stderr)
        return 1
    if a.prior_from:  # the prior's accuracy from another bench of the same frames (older bench.json files lack it)
        res.setdefault("prior_accuracy", json.loads(a.prior_from.read_text())["prior_accuracy"])
    res["summary"] = summarize(res)  # recomputed: the summary's fields grow with the report
    text = f"From `{a.bench_json}` (`{' '.join(res['command'])}`, commit {str(res.get('commit'))[:10]}):\n\n" + format_tables(res)
    if a.readme is None:
        print(text)
        return 0
    doc = a.readme.read_text()
    start, end = f"<!-- bench:{a.name}:start -->", f"<!-- bench:{a.name}:end -->"
    if start not in doc or end not in doc:
        print(f"bench_tables: error: {a.readme}: no {start} ... {end} block", file=sys.stderr)
        return 1
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    a.readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    print(f"{a.readme}: block {a.name} updated from {a.bench_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
