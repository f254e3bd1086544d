"""The `polyglot-distil` command: one subcommand per pipeline stage.

    polyglot-distil count   --tokenizer NAME --lang en=FILE --lang fr=FILE --out counts.parquet
    polyglot-distil merge   part0.parquet part1.parquet --out counts.parquet
    polyglot-distil trim    --model NAME --counts counts.parquet --langs en,fr --out DIR
    polyglot-distil verify  --original NAME --trimmed DIR --lang en=FILE --lang fr=FILE
    polyglot-distil student --teacher DIR --out DIR [--layers 6 --init-layers 0,2,4,7,9,11]
    polyglot-distil finetune --model NAME --task nli --train SOURCE --dev SOURCE --out DIR
    polyglot-distil distil general --teacher DIR --student DIR --lang en=FILE --lang fr=FILE --out DIR
    polyglot-distil distil task --teacher DIR --student DIR --task nli --train SOURCE --dev SOURCE --out DIR
    polyglot-distil apply-diff --base DIR --diff DIR/sparse_diff --out DIR
    polyglot-distil eval xnli --model DIR [--teacher DIR] --langs fr,sw [--data DIR] --out DIR
    polyglot-distil run CONFIG.yaml [key=value ...] [--only STAGE] [--from STAGE]   # all of it
    polyglot-distil smoke-model --texts corpora/*/sample.txt --out DIR   # tiny random model, offline

Mistakes a user can make end with one line `error: ...` and exit status 2; a traceback means
a bug in polyglot-distil (set POLYGLOT_DISTIL_DEBUG=1 to see tracebacks of user errors too).
"""

from __future__ import annotations

import argparse
import os
import sys

from polyglot_distil import __version__
from polyglot_distil.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from polyglot_distil import count, distil_general, distil_task, finetune, sparse, student
    from polyglot_distil import evaluate, pipeline, smoke, trim, verify

    parser = argparse.ArgumentParser(
        prog="polyglot-distil",
        description="Small, fast, language-specific models out of multilingual encoders.")
    parser.add_argument("--version", action="version", version=f"polyglot-distil {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each stage module adds its own subcommand(s), in pipeline order.
    count.add_count_parser(subparsers)
    count.add_merge_parser(subparsers)
    trim.add_trim_parser(subparsers)
    verify.add_verify_parser(subparsers)
    student.add_student_parser(subparsers)
    finetune.add_finetune_parser(subparsers)
    distil = subparsers.add_parser("distil", help="distil a compact student (general phase, task phase)")
    distil_subparsers = distil.add_subparsers(dest="phase", metavar="PHASE", required=True)
    distil_general.add_distil_parser(distil_subparsers)
    distil_task.add_distil_parser(distil_subparsers)
    sparse.add_apply_diff_parser(subparsers)
    smoke.add_smoke_parser(subparsers)
    evaluate.add_eval_parser(subparsers)
    pipeline.add_run_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from polyglot_distil.loading import quiet_transformers

    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_transformers()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if os.environ.get("POLYGLOT_DISTIL_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
