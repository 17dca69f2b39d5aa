"""``raystep report RUN``: write ``RUN/report/index.html`` and print where it is.

Takes the run folder itself (``<storage>/<run>``), so it works on any run folder, copied or mounted,
without its config. Files it cannot read are listed (file and reason) and the page shows them too.
"""

from __future__ import annotations

import argparse
import sys

from raystep.report.build import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run folder, <storage.root>/<name> (it holds manifest.json)")
    parser.add_argument("--out", help="where to write the page (default: RUN/report)")
    parser.add_argument(
        "--inline-max-mb",
        type=float,
        default=4.0,
        help="pair data up to this size goes inside index.html (one file); above, into data/ beside it",
    )


def main(args: argparse.Namespace) -> int:
    try:
        result = build_report(args.run, args.out, inline_max_bytes=int(args.inline_max_mb * 1e6))
    except FileNotFoundError as exc:
        print(f"raystep report: {exc}", file=sys.stderr)
        return 2
    for message in result.warnings:
        print(f"raystep report: warning: {message}", file=sys.stderr)
    print(
        f"{result.pairs} pairs, {result.files} file(s), {result.bytes / 1e6:.2f} MB, "
        f"built in {result.seconds:.1f} s"
    )
    print(f"report: {result.index}")
    return 0
