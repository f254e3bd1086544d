"""`export onnx`: a model folder as an ONNX graph, checked with onnxruntime against PyTorch; and
the ONNX classifier that `eval xnli` runs.

    polyglot-distil export onnx --model out/task/best --out out/student-onnx
    polyglot-distil export onnx --model out/task/best --out out/student-onnx --int8 --check-text held-out.fr.txt
    polyglot-distil eval xnli --model out/student-onnx --langs fr ...               # model.onnx
    polyglot-distil eval xnli --model out/student-onnx/model_int8.onnx --langs fr ...

The graph (TorchScript exporter, `--opset`, default 17) takes `input_ids`, `attention_mask` (and
`token_type_ids` when the tokenizer makes them), int64 [batch, sequence] with both axes dynamic,
and gives the model's first output (`logits` of a classifier, `last_hidden_state` of a bare
encoder). Before anything is written it is run with onnxruntime on `--check-lines` lines of
held-out text (`--text`, any corpus source; without it, seeded random token ids), in padded
batches of 8 of varied length, and its outputs are compared with PyTorch's (eager attention, float32,
padding positions left out): the largest absolute difference is printed and must be at most
`--tolerance`. `--int8` also writes `model_int8.onnx`, onnxruntime's dynamic int8 quantization
(int8 weights per output channel, activations per batch; embedding tables too with `--embeddings
int8`), compared the same way (reported, not held to the tolerance: int8 rounds).

OUT also holds config.json, the tokenizer and export.json (opset, inputs, outputs, the checks).
An int8 PyTorch folder (`quantize`) cannot be exported: export its float model with `--int8`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FLOAT_FILE, INT8_FILE = "model.onnx", "model_int8.onnx"
CHECK_BATCH = 8


def onnx_file_of(path) -> Path | None:
    """The ONNX graph `path` names: a .onnx file, or a folder's model.onnx; None otherwise."""
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return path
    if path.is_dir() and (path / FLOAT_FILE).is_file():
        return path / FLOAT_FILE
    return None


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX needs onnxruntime and onnx: pip install 'polyglot-distil[onnx]'") from None
    return onnxruntime


def session(file: Path, threads: int):
    """An onnxruntime CPU session on `threads` threads."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def _classifier_class():
    import torch

    class OnnxClassifier(torch.nn.Module):
        """An ONNX sequence classifier behind the interface evaluation uses: `model(**inputs).logits`
        (torch), `.config`, `.eval()`, `.to("cpu")`. It runs on as many threads as torch is set to
        (`torch.get_num_threads()` at call time, one session per count), so that timings on one
        thread measure one thread."""

        def __init__(self, file: Path, config):
            super().__init__()
            self.file, self.config = Path(file), config
            self._sessions: dict = {}
            self._anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # where inputs go: CPU

        def _session(self):
            threads = torch.get_num_threads()
            if threads not in self._sessions:
                self._sessions[threads] = session(self.file, threads)
            return self._sessions[threads]

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
            from transformers.modeling_outputs import SequenceClassifierOutput

            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            feed = {}
            for spec in self._session().get_inputs():
                value = given.get(spec.name)
                if value is None:
                    value = torch.ones_like(input_ids) if spec.name == "attention_mask" else torch.zeros_like(input_ids)
                feed[spec.name] = value.detach().cpu().numpy().astype(np.int64)
            logits = self._session().run(None, feed)[0]
            return SequenceClassifierOutput(logits=torch.from_numpy(np.ascontiguousarray(logits)))

        def parameter_counts(self) -> dict:
            return graph_parameters(self.file)

    return OnnxClassifier


def load_onnx_classifier(file: Path, config):
    return _classifier_class()(file, config)


def graph_parameters(file: Path) -> dict:
    """{"total", "embedding", "bytes"} of an ONNX graph's initializers (the tables that Gather
    nodes read are the embeddings; an int8 graph counts its int8 weights and their scales; equal
    tensors, which the exporter stores once, count once)."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise UserError("ONNX needs onnx and onnxruntime: pip install 'polyglot-distil[onnx]'") from None
    graph = onnx.load(str(file), load_external_data=False).graph
    gathered = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    total = embedding = size = 0
    for init in graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        if count < 2:  # shape constants and scalars are not weights
            continue
        total += count
        size += count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        if init.name in gathered or init.name.removesuffix("_quantized") in gathered:
            embedding += count
    return {"total": total, "embedding": embedding, "bytes": size}


# ---------------------------------------------------------------------------------------------
# Export


def _check_inputs(tokenizer, texts: list[str] | None, vocab: int, lines: int, seed: int) -> list[dict]:
    """Batches (numpy int64) to compare the graph with PyTorch on: the texts, or seeded random ids."""
    names = [k for k in INPUTS if k in tokenizer.model_input_names or k == "input_ids"]
    batches = []
    if texts:
        for start in range(0, len(texts), CHECK_BATCH):
            encoded = tokenizer(texts[start:start + CHECK_BATCH], truncation=True, max_length=128, padding=True,
                                return_tensors="np")
            batches.append({k: encoded[k].astype(np.int64) for k in names if k in encoded})
        return batches
    rng = np.random.default_rng(seed)
    low = min(5, vocab - 1)
    for start in range(0, lines, CHECK_BATCH):
        rows = min(CHECK_BATCH, lines - start)
        lengths = rng.integers(3, 64, rows)
        ids = np.full((rows, lengths.max()), tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, n in enumerate(lengths):
            ids[i, :n] = rng.integers(low, vocab, n)
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            batch["token_type_ids"] = np.zeros_like(ids)
        batches.append(batch)
    return batches


def _max_difference(model, file: Path, batches: list[dict]) -> float:
    """Largest |ONNX - PyTorch| over the batches' outputs, padding positions left out."""
    import torch

    run = session(file, torch.get_num_threads())
    wanted = [i.name for i in run.get_inputs()]
    worst = 0.0
    for batch in batches:
        with torch.inference_mode():
            expected = model(**{k: torch.from_numpy(v) for k, v in batch.items()})[0].float().numpy()
        got = run.run(None, {k: batch[k] for k in wanted})[0]
        difference = np.abs(got - expected)
        if difference.ndim == 3:  # [batch, sequence, hidden]: real tokens only
            difference = difference[batch["attention_mask"].astype(bool)]
        worst = max(worst, float(difference.max()))
    return worst


def _first_output(model, tokenizer):
    """A module giving the model's first output tensor, its name, and the input names."""
    import torch

    names = [k for k in INPUTS if k == "input_ids" or k in tokenizer.model_input_names]

    class FirstOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra, return_dict=True)[0]

    with torch.inference_mode():
        example = tokenizer(["a b c", "a"], return_tensors="pt", padding=True)
        output = model(**{k: example[k] for k in names if k in example}, return_dict=True)
    return FirstOutput().eval(), next(iter(output.keys())), names


@contextlib.contextmanager
def _quiet_output():
    """Standard output and error, at the file-descriptor level (where C++ writes), sent nowhere."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def export_graph(model, tokenizer, file: Path, opset: int) -> dict:
    """Write the ONNX graph of `model` (float, eval mode) to `file`; its input and output names."""
    import torch

    module, output, names = _first_output(model, tokenizer)
    example = tokenizer(["a b c d e", "a b"], ["c d", "e"], return_tensors="pt", padding=True)
    args = tuple(example[k] if k in example else torch.zeros_like(example["input_ids"]) for k in names)
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    # The TorchScript exporter prints graphs (from C++, on an error) and deprecation notes; an error
    # keeps its first line.
    with warnings.catch_warnings(), _quiet_output():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(file), input_names=names, output_names=[output], dynamic_axes=axes,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        except (torch.onnx.errors.OnnxExporterError, torch.onnx.errors.UnsupportedOperatorError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = first.split(" [Caused by")[0].strip()
            raise UserError(f"--opset {opset} cannot express a layer of this model: {first[:300]}; "
                            "try a newer opset (default 17)") from None
    return {"inputs": names, "output": output}


def quantize_graph(source: Path, target: Path, embeddings: bool) -> None:
    """onnxruntime's dynamic int8 quantization of `source` (weights per output channel)."""
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing before quantization", said at every call
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"] + (["Gather"] if embeddings else []))
    finally:
        root.setLevel(level)


def _read_texts(sources: list[str], lines: int) -> list[str]:
    from polyglot_distil.data.corpus import iter_source, parse_source

    texts: list[str] = []
    for spec in sources:
        for line in iter_source(parse_source(spec)):
            texts.append(line)
            if len(texts) >= lines:
                return texts
    if not texts:
        raise UserError(f"--check-text {', '.join(sources)}: no line of text to check the graph on")
    return texts


def export_onnx(model: str, out: str, *, opset: int = 17, int8: bool = False, embeddings: str = "float",
                check_text: list[str] | None = None, check_lines: int = 64, tolerance: float = 1e-4, overwrite: bool = False,
                trust_remote_code: bool = False) -> dict:
    """Write `out`: model.onnx (and model_int8.onnx with `int8`), config, tokenizer and export.json,
    the graph checked against PyTorch on `check_text` sources (else seeded random ids); returns
    export.json's record."""
    import torch
    from transformers import AutoConfig

    from polyglot_distil.models.loading import check_tokenizer_fits, copy_tokenizer, load_model, load_tokenizer, \
        model_class_for
    from polyglot_distil.models.quantized import is_int8_folder
    from polyglot_distil.outputs import atomic_dir, check_apart, check_writable

    check_apart([("--model", model)], [("--out", out)])
    if check_lines < 1:
        raise UserError(f"--check-lines must be at least 1, not {check_lines}")
    if is_int8_folder(model):
        raise UserError(f"{model} is an int8 PyTorch model, which ONNX cannot take; export the float model it "
                        "was made from, with --int8 for onnxruntime's int8 variant")
    if onnx_file_of(model):
        raise UserError(f"{model} is an ONNX model already; export the PyTorch model folder")
    _onnxruntime()
    check_writable(out, overwrite)
    texts = _read_texts(check_text, check_lines) if check_text else None
    config = load_model(model, AutoConfig, trust_remote_code=trust_remote_code)
    network = load_model(model, model_class_for(config), trust_remote_code=trust_remote_code,
                         attn_implementation="eager").eval()
    tokenizer = load_tokenizer(model, trust_remote_code)
    check_tokenizer_fits(network, tokenizer, model)
    batches = _check_inputs(tokenizer, texts, network.get_input_embeddings().num_embeddings, check_lines, 0)
    with atomic_dir(out, overwrite) as tmp:
        names = export_graph(network, tokenizer, tmp / FLOAT_FILE, opset)
        checks = {"float": _max_difference(network, tmp / FLOAT_FILE, batches)}
        if checks["float"] > tolerance:
            raise UserError(f"the ONNX graph's outputs differ from PyTorch's by up to {checks['float']:.3g} "
                            f"(> --tolerance {tolerance:g}); nothing written")
        if int8:
            quantize_graph(tmp / FLOAT_FILE, tmp / INT8_FILE, embeddings == "int8")
            checks["int8"] = _max_difference(network, tmp / INT8_FILE, batches)
        config.save_pretrained(tmp)
        copy_tokenizer(model, tmp, tokenizer)
        for extra in ("training.json",):
            if (Path(model) / extra).is_file():
                shutil.copyfile(Path(model) / extra, tmp / extra)
        sizes = {name: (tmp / name).stat().st_size for name in (FLOAT_FILE, INT8_FILE) if (tmp / name).is_file()}
        report = {"command": "export onnx", "model": str(model), "opset": opset, **names,
                  "dynamic_axes": "batch and sequence", "checked_on": f"{len(texts)} lines of {', '.join(check_text)}"
                  if texts else f"{check_lines} rows of seeded random token ids",
                  "max_abs_difference": checks, "tolerance": tolerance, "bytes": sizes,
                  "torch": torch.__version__, "onnxruntime": _onnxruntime().__version__}
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
