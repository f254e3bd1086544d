#!/usr/bin/env bash
# Set up (or reuse) the environment and run the main job on its offline default:
# a smoke teacher (tiny, random weights, tokenizer trained on the bundled samples) and token
# counts of the bundled sample corpora. Output goes to ${1:-out/demo}.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
export HF_HUB_OFFLINE=1
OUT="${1:-out/demo}"
mkdir -p "$OUT"
polyglot-distil smoke-model --family bert --texts corpora/{en,fr,de,es,sw}/sample.txt \
  --vocab-size 2000 --out "$OUT/teacher" --overwrite
polyglot-distil count --tokenizer "$OUT/teacher" \
  --lang en=corpora/en/sample.txt --lang fr=corpora/fr/sample.txt --lang sw=corpora/sw/sample.txt \
  --out "$OUT/counts.parquet" --overwrite
echo "demo: counts in $OUT/counts.parquet"
