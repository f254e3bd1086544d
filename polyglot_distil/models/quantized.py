"""Int8 models: weights stored as int8 with float scales (safetensors), run on CPU with PyTorch's
dynamic int8 kernels (int8 weights, activations quantized per batch as they come).

    from polyglot_distil.models.quantized import load_int8
    model = load_int8("out/student-int8")      # the class config.json names, in eval mode, on CPU

`polyglot-distil quantize` writes these folders (`--method dynamic`: the float model's weights
quantized as they are; `--method qat`: weights trained with learned step sizes, see
distill/quantize.py), and `eval xnli` loads them like any model folder. A folder holds:

    config.json               the float model's configuration
    int8.json                 what is int8: {"format", "method", "bits", "model_class", "linear": [...],
                              "embeddings": [...]}
    model_int8.safetensors    for each int8 module NAME: NAME.weight_int8 (int8 [rows, columns]) and
                              NAME.weight_scale (float32 [rows]), weight = weight_int8 * weight_scale[:, None];
                              NAME.bias and every other tensor float32
    tokenizer files, quantize.json (the command's report)

Quantization is symmetric, one scale per output row of a Linear (per row of an embedding table), the
integers in [-(2^(b-1) - 1), 2^(b-1) - 1] for b bits (so 0 is exact, and a 4- or 2-bit model is
stored and run as int8 whose values use fewer levels). There is deliberately no
`model.safetensors`: `from_pretrained` cannot mistake the folder for a float model (it would fill
the int8 weights with random values); it fails on the missing file instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from polyglot_distil.errors import UserError

FORMAT = "polyglot-distil-int8"
INFO_FILE = "int8.json"
WEIGHTS_FILE = "model_int8.safetensors"
BITS = (8, 4, 2)


def is_int8_folder(path) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def qmax(bits: int) -> int:
    """The largest integer of a symmetric `bits`-bit grid: 127 at 8 bits, 7 at 4, 1 at 2."""
    return 2 ** (bits - 1) - 1


def observed_scales(weight, bits: int = 8):
    """float32[rows]: the step of each row that maps its largest |value| to qmax(bits)."""
    import torch

    return (weight.detach().abs().amax(dim=1).float() / qmax(bits)).clamp_min(torch.finfo(torch.float32).tiny)


def quantize_rows(weight, scale, bits: int = 8):
    """int8[rows, columns]: round(weight / scale[row]), clipped to [-qmax, qmax]."""
    import torch

    limit = qmax(bits)
    return torch.clamp(torch.round(weight.detach().float() / scale.detach().float()[:, None]), -limit, limit
                       ).to(torch.int8)


def fake_quantize(weight, scale, bits: int = 8):
    """The float weight an int8 model computes with: quantize_rows(...) * scale[row]."""
    return quantize_rows(weight, scale, bits).float() * scale.detach().float()[:, None]


# ---------------------------------------------------------------------------------------------
# Modules of a loaded int8 model


def _quiet_deprecations():
    """torch.ao.quantization warns, once per call, that it moves to torchao; its dynamic int8
    Linear is still the CPU int8 kernel that ships with torch."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantize_per_|quantized tensor).*")
    return context


ACTIVATION_BITS_VARIABLE = "POLYGLOT_DISTIL_INT8_ACTIVATION_BITS"


def activation_bits() -> int:
    """How many bits the int8 Linear layers quantize their activations to on this machine: 8 where
    the CPU's int8 dot product accumulates into 32 bits (x86 with VNNI; ARM's QNNPACK engine), 7
    elsewhere. PyTorch's dynamic int8 Linear always keeps 7 (`reduce_range`): on x86 without
    VNNI, FBGEMM adds pairs of 8-bit x 8-bit products in 16 bits, which full 8-bit activations can
    saturate. $POLYGLOT_DISTIL_INT8_ACTIVATION_BITS (7 or 8) overrides the choice."""
    import os

    import torch

    given = os.environ.get(ACTIVATION_BITS_VARIABLE)
    if given:
        if given not in ("7", "8"):
            raise UserError(f"${ACTIVATION_BITS_VARIABLE} must be 7 or 8, not {given!r}")
        return int(given)
    if torch.backends.quantized.engine == "qnnpack":
        return 8
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return 7
    return 8 if {"avx512_vnni", "avx_vnni"} & set(flags) else 7


def _int8_linear_class():
    from torch.ao.nn.quantized.dynamic import Linear

    class Int8Linear(Linear):
        """PyTorch's dynamic int8 Linear (int8 weights, activations quantized per batch to
        `activation_bits`), with the activation range chosen for the CPU instead of always 7 bits."""

        reduce_range = True

        def forward(self, x):
            import torch

            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                   reduce_range=self.reduce_range)
            return y.to(x.dtype)

    return Int8Linear


def int8_linear(weight_int8, scale, bias, bits: int | None = None):
    """A dynamic int8 Linear computing with exactly these integers and scales, its activations
    quantized to `bits` (7 or 8; default `activation_bits()`)."""
    import torch

    context = _quiet_deprecations()
    try:
        rows, columns = weight_int8.shape
        module = _int8_linear_class()(columns, rows, bias_=bias is not None, dtype=torch.qint8)
        module.reduce_range = (bits or activation_bits()) < 8
        dequantized = weight_int8.float() * scale.float()[:, None]
        qweight = torch.quantize_per_channel(dequantized, scale.double(), torch.zeros(rows, dtype=torch.long), 0,
                                             torch.qint8)
        module.set_weight_bias(qweight, None if bias is None else bias.float())
    finally:
        context.__exit__(None, None, None)
    return module


def _int8_embedding_class():
    import torch

    class Int8Embedding(torch.nn.Module):
        """An embedding table of int8 rows with one float scale per row; looks up the int8 rows,
        then scales them (the table is never held in float)."""

        def __init__(self, weight_int8, scale, padding_idx=None):
            super().__init__()
            self.register_buffer("weight_int8", weight_int8)
            self.register_buffer("weight_scale", scale.float())
            self.num_embeddings, self.embedding_dim = weight_int8.shape
            self.padding_idx = padding_idx

        def forward(self, ids):
            rows = torch.nn.functional.embedding(ids, self.weight_int8)
            return rows.float() * self.weight_scale[ids].unsqueeze(-1)

        @property
        def weight(self):  # for code that reads the table (its device, dtype or values)
            return self.weight_int8.float() * self.weight_scale[:, None]

    return Int8Embedding


def _set_module(model, name: str, module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ---------------------------------------------------------------------------------------------
# Writing and loading


def int8_tensors(model, bits: int, linear_scales: dict | None = None, embeddings: bool = False) -> tuple[dict, dict]:
    """(tensors for model_int8.safetensors, {"linear": names, "embeddings": names}) of a float
    model. Every `nn.Linear` (subclasses included: the fake-quantized ones of QAT) is int8, with
    its scales from `linear_scales` {name: float[rows]} (QAT's learned steps) or observed (the
    largest |weight| of each row); with `embeddings`, every `nn.Embedding` too (observed)."""
    import torch

    quantized = {"linear": [], "embeddings": []}
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            kind = "linear"
            scale = (linear_scales or {}).get(name)
        elif embeddings and isinstance(module, torch.nn.Embedding):
            kind, scale = "embeddings", None
        else:
            continue
        weight = module.weight.detach().float().cpu()
        scale = observed_scales(weight, bits) if scale is None else scale.detach().float().cpu().reshape(-1)
        tensors[f"{name}.weight_int8"] = quantize_rows(weight, scale, bits)
        tensors[f"{name}.weight_scale"] = scale.clone()
        if kind == "linear" and module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.detach().float().cpu().clone()
        quantized[kind].append(name)
    if not quantized["linear"]:
        raise UserError(f"{type(model).__name__} has no Linear layer to quantize")
    owners = tuple(f"{name}." for names in quantized.values() for name in names)
    for key, value in model.state_dict().items():
        if not key.startswith(owners):
            tensors[key] = value.detach().cpu().clone().contiguous()
    return tensors, quantized


def save_int8(model, folder: Path, bits: int, method: str, linear_scales: dict | None = None,
              embeddings: bool = False) -> dict:
    """Write `model` (float, or QAT's fake-quantized) as an int8 folder (config, int8.json,
    model_int8.safetensors; no tokenizer). Returns the int8.json record."""
    from safetensors.torch import save_file

    tensors, quantized = int8_tensors(model, bits, linear_scales, embeddings)
    model.config.save_pretrained(folder)
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": FORMAT})
    record = {"format": FORMAT, "method": method, "bits": bits, "model_class": type(model).__name__,
              "scheme": "symmetric, one scale per output row", **quantized}
    (folder / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def load_int8(path, attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    """The int8 model of folder `path` (written by `polyglot-distil quantize`), in eval mode on
    CPU: int8 Linear layers (PyTorch dynamic int8, activations quantized to `activation_bits()`),
    int8 embeddings if it has them, the rest float. One clear line if the folder is incomplete."""
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from polyglot_distil.models.families import runnable_attention

    folder = Path(path)
    try:
        record = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder / INFO_FILE}: cannot read it ({exc})") from None
    if record.get("format") != FORMAT:
        raise UserError(f"{folder / INFO_FILE}: not a {FORMAT} folder (format {record.get('format')!r})")
    if not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"{folder} has {INFO_FILE} but no {WEIGHTS_FILE}: rerun 'polyglot-distil quantize'")
    model_class = getattr(transformers, record["model_class"], None)
    if model_class is None:
        raise UserError(f"{folder}: transformers has no class {record['model_class']} (int8.json model_class)")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.random.fork_rng(devices=[]):  # every weight is overwritten below
        model = model_class._from_config(config, attn_implementation=runnable_attention(config, attn_implementation))
    tensors = load_file(folder / WEIGHTS_FILE)
    owners = tuple(f"{name}." for name in record["linear"] + record["embeddings"])
    # The float tensors first, into the float skeleton; then the int8 modules replace theirs.
    result = model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(owners)}, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(owners)]
    if missing or result.unexpected_keys:
        shown = ", ".join((missing or result.unexpected_keys)[:3])
        raise UserError(f"{folder / WEIGHTS_FILE} does not match its config ({'missing' if missing else 'unexpected'} "
                        f"tensors: {shown})")
    Int8Embedding = _int8_embedding_class()
    bits = activation_bits()
    try:
        for name in record["linear"]:
            _set_module(model, name, int8_linear(tensors[f"{name}.weight_int8"], tensors[f"{name}.weight_scale"],
                                                 tensors.get(f"{name}.bias"), bits))
        for name in record["embeddings"]:
            old = model.get_submodule(name)
            _set_module(model, name, Int8Embedding(tensors[f"{name}.weight_int8"], tensors[f"{name}.weight_scale"],
                                                   old.padding_idx))
    except (KeyError, AttributeError) as exc:
        raise UserError(f"{folder / WEIGHTS_FILE} does not match int8.json ({exc}); rerun 'polyglot-distil quantize'"
                        ) from None
    return model.eval()
