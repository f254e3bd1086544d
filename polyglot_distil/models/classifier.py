"""NLI classifiers: loading one with its class order, building a new 3-way head on a body,
predicting logits for (premise, hypothesis) pairs, and saving one as a plain model folder.

Every stage that touches a classifier uses these: `finetune` (the task teacher), `distil task`
(teacher and student), `eval xnli`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polyglot_distil.data.nli import LABELS, NLIData, label_id
from polyglot_distil.errors import UserError
from polyglot_distil.models.loading import check_tokenizer_fits, copy_tokenizer, load_model, load_tokenizer, \
    save_pretrained_as

NLI_ID2LABEL = dict(enumerate(LABELS))


@dataclass
class Classifier:
    """A loaded NLI model. `to_xnli[c]` is the XNLI label id (index into `LABELS`) of the
    model's output class c; `note` says when the label names had to be assumed."""

    path: str
    model: Any
    tokenizer: Any
    to_xnli: list[int]
    note: str | None = None


def _head_of(config) -> str:
    """What task head a config describes, in words ("a masked-LM head", "a 2-way ...")."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    kind = arch.split("For", 1)[1] if "For" in arch else ""
    n = getattr(config, "num_labels", None)
    return {
        "SequenceClassification": f"a {n}-way classification head",
        "TokenClassification": f"a {n}-way token-classification head",
        "MaskedLM": "a masked-LM head",
        "PreTraining": "pre-training heads (masked LM and next sentence)",
        "CausalLM": "a causal-LM head",
        "QuestionAnswering": "a question-answering head",
        "MultipleChoice": "a multiple-choice head",
        "": f"no task head ({arch or 'a bare encoder'})",
    }.get(kind, f"a {kind} head ({arch})")


def _label_order(path: str, config) -> tuple[list[int], str | None]:
    names = [str(config.id2label.get(c, f"LABEL_{c}")).strip().lower() for c in range(len(LABELS))]
    if names == [f"label_{c}" for c in range(len(LABELS))]:
        return list(range(len(LABELS))), (f"{path}: generic label names LABEL_0..2 in config.json; assumed XNLI "
                                          f"order ({', '.join(LABELS)})")
    ids = [label_id(name) for name in names]
    if None in ids or len(set(ids)) != len(LABELS):
        raise UserError(f"{path}: its labels {names} (config.json id2label) are not {', '.join(LABELS)}; "
                        "fix id2label to name the NLI label of each output")
    return ids, None


def load_classifier(path: str | os.PathLike, device: str = "cpu", attn_implementation: str = "sdpa",
                    trust_remote_code: bool = False, dtype=None, tokenizer=None) -> Classifier:
    """Load an NLI model and its tokenizer; one clear line if it has no 3-way classification head.
    `dtype` (a torch dtype; None: the one it was saved in): training loads float32. `tokenizer`:
    one already loaded from the same files (`loading.same_tokenizer_files`), used instead of
    loading them again.

    Compare two models' outputs only with both loaded with the same `attn_implementation`
    (eager and sdpa differ by ~1e-7). Deployed forms load too, on the CPU: an int8 folder
    (`quantize`) and an ONNX graph (`export onnx`: its folder, or a .onnx file in it)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from polyglot_distil.models.onnx_model import load_onnx_classifier, onnx_file_of
    from polyglot_distil.models.quantized import is_int8_folder, load_int8

    path = str(path)
    onnx_file = onnx_file_of(path)
    folder = str(onnx_file.parent) if onnx_file is not None else path
    config = load_model(folder, AutoConfig, trust_remote_code=trust_remote_code)
    head = _head_of(config)
    if config.architectures and head != f"a {len(LABELS)}-way classification head":
        raise UserError(f"{path} has {head}, not a {len(LABELS)}-way sequence-classification head "
                        f"({', '.join(LABELS)}); fine-tune it on NLI first")
    if config.num_labels != len(LABELS):
        raise UserError(f"{path} has a {config.num_labels}-way classification head; XNLI needs 3 ({', '.join(LABELS)})")
    to_xnli, note = _label_order(path, config)
    if onnx_file is not None or is_int8_folder(path):
        model = (load_onnx_classifier(onnx_file, config) if onnx_file is not None
                 else load_int8(path, attn_implementation, trust_remote_code))
        return Classifier(path, model.eval(), tokenizer or load_tokenizer(folder, trust_remote_code=trust_remote_code),
                          to_xnli, note)
    model, info = load_model(path, AutoModelForSequenceClassification, trust_remote_code=trust_remote_code,
                             attn_implementation=attn_implementation, output_loading_info=True,
                             **({"dtype": dtype} if dtype is not None else {}))
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise UserError(f"{path} has no saved classification head (weights missing: {missing}); "
                        "fine-tune it on NLI first")
    tokenizer = tokenizer or load_tokenizer(path, trust_remote_code=trust_remote_code)
    check_tokenizer_fits(model, tokenizer, path)
    return Classifier(path, model.to(device).eval(), tokenizer, to_xnli, note)


def predict_logits(model, tokenizer, premises: list[str], hypotheses: list[str], batch_size: int = 32,
                   max_length: int = 128, desc: str | None = None, progress: bool | None = None,
                   sort_by_length: bool = True, part: tuple[int, int] = (0, 1)) -> np.ndarray:
    """float32[N, C]: the model's logits for each (premise, hypothesis) pair, in data order and
    the model's own class order. Pairs are truncated to `max_length` tokens (longest first),
    sorted by length (unless `sort_by_length=False`) and padded per batch to its longest pair.

    With `part=(i, n)` only batches i, i + n, i + 2n, ... of that order run (the batches one
    process running them all would run, so the same logits) and the other rows are NaN; see
    `gather_parts`."""
    import torch
    from polyglot_distil.progress import progress as progress_display

    encoded = tokenizer(premises, hypotheses, truncation=True, max_length=max_length, padding=False)
    inputs = [k for k in tokenizer.model_input_names if k in encoded]
    pad_value = {k: 0 for k in inputs} | {"input_ids": tokenizer.pad_token_id or 0}
    lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(premises))
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    device = next(model.parameters()).device
    out = np.full((len(premises), model.config.num_labels), np.nan, dtype=np.float32)
    index, parts = part
    starts = range(index * batch_size, len(order), parts * batch_size)
    for start in progress_display(starts, desc=desc, unit=" batches", show=progress):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        batch = {}
        for key in inputs:
            padded = np.full((len(rows), width), pad_value[key], dtype=np.int64)
            for i, row in enumerate(rows):
                values = encoded[key][row]
                padded[i, :len(values)] = values
            batch[key] = torch.from_numpy(padded).to(device)
        with torch.inference_mode():
            out[rows] = model(**batch).logits.float().cpu().numpy()
    return out


def new_classifier(base: str, seed: int, trust_remote_code: bool = False, config=None, **kwargs):
    """A 3-way NLI classifier (classes in XNLI order) on the body of checkpoint `base`: the head,
    and whatever else `base` lacks (BERT's pooler after a masked-LM checkpoint), is new,
    initialised from `seed`. With `config`, that configuration instead. Returns (model, the
    names of the new parameters)."""
    import torch
    from transformers import AutoModelForSequenceClassification


    if config is None:
        kwargs.update(id2label=NLI_ID2LABEL, label2id={v: k for k, v in NLI_ID2LABEL.items()})
    else:
        kwargs["config"] = config
    with torch.random.fork_rng(devices=[]):  # load_model already quiets transformers' load report
        torch.manual_seed(seed)
        model, loading = load_model(base, AutoModelForSequenceClassification, trust_remote_code=trust_remote_code,
                                    output_loading_info=True, **kwargs)
    return model, set(loading["missing_keys"])


def is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


def load_for_finetuning(name: str, seed: int, trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                        dtype=None):
    """(classifier, tokenizer, to_xnli, note). A 3-way NLI classifier keeps its head and class
    order (`to_xnli[c]`: the XNLI label of class c); any other checkpoint (masked-LM, bare
    encoder, another task's head) gets a new 3-way head. A classification head with other
    labels is an error (`evaluate.load_classifier`): its classes have no NLI meaning. `dtype`:
    as `load_classifier`."""
    from transformers import AutoConfig

    config = load_model(name, AutoConfig, trust_remote_code=trust_remote_code)
    if is_sequence_classifier(config):
        classifier = load_classifier(name, attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code, dtype=dtype)
        config = classifier.model.config  # generic LABEL_0..2 names become the NLI names they were taken for
        config.id2label = {c: LABELS[label] for c, label in enumerate(classifier.to_xnli)}
        config.label2id = {name: c for c, name in config.id2label.items()}
        return classifier.model, classifier.tokenizer, classifier.to_xnli, classifier.note
    model, _ = new_classifier(name, seed, trust_remote_code, attn_implementation=attn_implementation,
                              **({"dtype": dtype} if dtype is not None else {}))
    tokenizer = load_tokenizer(name, trust_remote_code)
    check_tokenizer_fits(model, tokenizer, name)
    return model, tokenizer, list(range(len(LABELS))), None


def gather_parts(logits: np.ndarray) -> np.ndarray:
    """The logits of every pair, from each process's `predict_logits(..., part=(rank, processes))`
    (NaN outside its part): all processes get them all."""
    from accelerate.utils import gather_object

    combined = None
    for piece in gather_object([logits]):  # in process order
        combined = piece.copy() if combined is None else np.where(np.isnan(combined), piece, combined)
    return combined


def dev_predictions(model, tokenizer, dev: NLIData, to_xnli: list[int], batch_size: int, max_length: int,
                    accelerator=None) -> np.ndarray:
    """int64[N]: the XNLI label id the model predicts for each dev pair. With an `accelerator` of
    several processes, each predicts its share of the batches and every process gets all the
    predictions, the same as one process would make."""
    processes = accelerator.num_processes if accelerator is not None else 1
    part = (accelerator.process_index, processes) if processes > 1 else (0, 1)
    logits = predict_logits(model, tokenizer, dev.premises, dev.hypotheses, batch_size, max_length, progress=False,
                            part=part)
    if processes > 1:
        logits = gather_parts(logits)
    return np.asarray(to_xnli)[logits.argmax(-1)]


def save_classifier(model, folder: Path, tokenizer_source: str, tokenizer, info: dict,
                    dtype: str | None = None) -> None:
    """A model folder any `AutoModelForSequenceClassification` user loads: weights (in `dtype`,
    see `loading.save_pretrained_as`), config, the tokenizer, and `info` as training.json."""
    from polyglot_distil.models.used_vocab import full_vocabulary

    with full_vocabulary(model):  # a model trained on the rows its data uses is saved whole
        save_pretrained_as(model, folder, dtype)
    copy_tokenizer(tokenizer_source, folder, tokenizer)
    (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
