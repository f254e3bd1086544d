"""Run by tests under `accelerate launch` (several gloo processes): the commands in the JSON file
given as the only argument, in order, in this one process. Each is a polyglot-distil command line,
or ["dev-logits", MODEL, DEV_TSV, OUT_NPY]: the model's logits on the dev pairs, each process
predicting its share of the batches (`predict_logits(part=...)`), gathered, written by the main
process.

    accelerate launch --multi_gpu --num_processes 2 tests/launch_commands.py commands.json
"""

from __future__ import annotations

import json
import sys


def dev_logits(model: str, dev: str, out: str) -> None:
    import numpy as np
    from accelerate import PartialState

    from polyglot_distil.data.nli import read_nli
    from polyglot_distil.models.classifier import gather_parts, load_classifier, predict_logits

    state = PartialState()
    classifier, pairs = load_classifier(model), read_nli(dev)
    logits = predict_logits(classifier.model, classifier.tokenizer, pairs.premises, pairs.hypotheses, batch_size=8,
                            max_length=48, progress=False, part=(state.process_index, state.num_processes))
    logits = gather_parts(logits)
    if state.is_main_process:
        np.save(out, logits)


def main(path: str) -> int:
    from polyglot_distil.cli import leave_process_group
    from polyglot_distil.cli import main as cli

    try:
        for command in json.loads(open(path, encoding="utf-8").read()):
            if command[0] == "dev-logits":
                dev_logits(*command[1:])
            elif cli(command) != 0:
                print(f"failed: {' '.join(command)}", file=sys.stderr)
                return 1
        return 0
    finally:
        leave_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
