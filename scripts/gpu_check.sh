#!/usr/bin/env bash
# The paths only a GPU takes, checked in a few minutes, offline, on a smoke model (random weights,
# hidden 128, 4 layers; the bundled text and NLI pairs): phase 1 and phase 2 for 50 steps each in
# bf16 and in fp16 on 1 GPU (and phase 1 with the DistilBERT losses in fp16); the same on 2 GPUs
# over NCCL when there are 2 or more (plus phase 2 with the hidden and attention losses only,
# which leave the pooler and classifier without gradient); `eval xnli` on the GPU. One line per check: PASS or FAIL, steps/s, peak GPU memory
# (scripts/gpu_check.py says what each check asserts). Exit status: the number of failed checks.
#
#   scripts/gpu_check.sh                  # outputs in a temporary folder, removed at the end
#   scripts/gpu_check.sh out/gpu-check    # kept there
#   scripts/gpu_check.sh --cpu-dry-run    # every check on the CPU (2 gloo processes for the
#                                         # 2-GPU ones), a few steps each: the script itself works
#
# Needs the project importable (its environment, e.g. `source scripts/setup_env.sh` once, with
# network) and a CUDA build of torch; PYTHON picks the interpreter (default .venv/bin/python when
# present, else python3).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

DRY=0
if [ "${1:-}" = "--cpu-dry-run" ]; then DRY=1; shift; fi
if [ -n "${1:-}" ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi

P1_STEPS=50; P2_EPOCHS=1.25  # 240 pairs in batches of 12: 20 a epoch; 25 full + 25 sparse steps
LIMIT=300                   # seconds per check; a hung collective fails its check, not the script
if [ "$DRY" = 1 ]; then
  export GPU_CHECK_CPU=1 CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  P1_STEPS=10; P2_EPOCHS=0.25
  GPUS=2
else
  GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
  if [ "$GPUS" -lt 1 ]; then
    echo "FAIL gpu: torch sees no CUDA GPU ($PY; torch.cuda.device_count() is 0 or torch is missing)"
    exit 1
  fi
  "$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, " + ", ".join(
      torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))'
fi

FAILED=0
step() {  # a setup step: its output only when it fails, and then the script stops
  local name="$1"; shift
  if ! log="$("$PY" -m polyglot_distil "$@" 2>&1)"; then
    echo "$log" | tail -20
    echo "FAIL setup $name"
    exit 1
  fi
}
check() {  # check NAME PROCESSES [--compare RUN] -- polyglot-distil arguments...
  local name="$1" processes="$2"; shift 2
  local runner=("$PY" scripts/gpu_check.py)
  if [ "$processes" -gt 1 ]; then
    local port; port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    runner=("$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$processes" --num_machines 1
            --mixed_precision no --dynamo_backend no --main_process_port "$port" scripts/gpu_check.py)
  fi
  local log="$WORK/$name.log"
  timeout "$LIMIT" "${runner[@]}" "$name" "$@" >"$log" 2>&1
  local status=$?
  if grep -q "^\(PASS\|FAIL\) $name:" "$log"; then
    grep "^\(PASS\|FAIL\) $name:" "$log"
  else
    echo "FAIL $name: no result (exit status $status$([ $status = 124 ] && echo ", over ${LIMIT} s")); see $log"
  fi
  [ $status = 0 ] || FAILED=$((FAILED + 1))
}

TEXTS=(--lang "en=corpora/en/sample.txt" --lang "fr=corpora/fr/sample.txt")
NLI=(--train corpora/nli/train-en.tsv --dev corpora/nli/dev-en.tsv --batch-size 12 --max-length 64)
general() {  # general OUT PRECISION: the phase-1 arguments, in ARGS
  ARGS=(distil general --teacher "$WORK/base" --student "$WORK/student" "${TEXTS[@]}" --block-size 128
        --batch-size 16 --steps "$P1_STEPS" --heldout-blocks 16 --eval-every "$P1_STEPS" --save-every "$P1_STEPS"
        --lr 1e-3 --log-every 1 --mixed-precision "$2" --no-progress --out "$1" --overwrite)
}
task() {  # task OUT PRECISION [more]: the phase-2 arguments (from the phase-1 student of that precision), in ARGS
  local out="$1" precision="$2"; shift 2
  ARGS=(distil task --teacher "$WORK/teacher/best" --student "$WORK/general-$precision-1gpu/final" "${NLI[@]}"
        --full-epochs "$P2_EPOCHS" --sparse-epochs "$P2_EPOCHS" --lr 1e-3 --log-every 1 --mixed-precision "$precision"
        --no-progress --out "$out" --overwrite "$@")
}

echo "setup: smoke model, student and NLI teacher in $WORK"
step smoke-model smoke-model --family bert --tokenizer-text corpora/{en,fr,sw}/sample.txt --vocab-size 2000 --hidden-size 128 \
  --layers 4 --out "$WORK/base" --overwrite
step student student --teacher "$WORK/base" --layers 2 --out "$WORK/student" --overwrite
step teacher finetune --model "$WORK/base" "${NLI[@]}" --epochs 1 --lr 1e-3 --no-progress --out "$WORK/teacher" \
  --overwrite

for precision in bf16 fp16; do
  general "$WORK/general-$precision-1gpu" "$precision"
  check "phase1-$precision-1gpu" 1 -- "${ARGS[@]}"
  task "$WORK/task-$precision-1gpu" "$precision"
  check "phase2-$precision-1gpu" 1 -- "${ARGS[@]}"
done
general "$WORK/general-distilbert-fp16-1gpu" fp16
check phase1-distilbert-fp16-1gpu 1 -- "${ARGS[@]}" --recipe distilbert  # the logit KL, MLM and cosine losses
check eval-xnli-gpu 1 -- eval xnli --model "$WORK/task-bf16-1gpu/best" --teacher "$WORK/teacher/best" \
  --langs en,fr,sw --data corpora/nli --split test --device "$([ "$DRY" = 1 ] && echo cpu || echo cuda)" --repeats 5 \
  --no-progress --out "$WORK/eval" --overwrite

if [ "$GPUS" -ge 2 ]; then
  for precision in bf16 fp16; do
    general "$WORK/general-$precision-2gpu" "$precision"
    check "phase1-$precision-2gpu" 2 --compare "$WORK/general-$precision-1gpu" -- "${ARGS[@]}"
    task "$WORK/task-$precision-2gpu" "$precision"
    check "phase2-$precision-2gpu" 2 --compare "$WORK/task-$precision-1gpu" -- "${ARGS[@]}"
  done
  task "$WORK/task-no-logits-2gpu" bf16 --logits-weight 0
  check phase2-no-logits-2gpu 2 -- "${ARGS[@]}"
else
  echo "SKIP 2-GPU checks: $GPUS GPU visible"
fi
echo "$FAILED check(s) failed"
exit "$FAILED"
