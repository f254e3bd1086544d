"""Trimming a model's vocabulary-indexed tensors, along whichever axis the model's code indexes by
token id.

`trim_model_vocab(model, kept_ids)` finds every parameter and buffer with an axis of the old
vocabulary's size, keeps `kept_ids` along that axis of those the model indexes by token id,
keeps ties (a tied decoder stays tied) and remaps the config's special ids; everything else is
left as it was, so on kept ids the trimmed model computes exactly what the source does. The
tensors it knows (`vocab_tensors`):

- rows (axis 0) of the token embeddings (`word_embeddings`, `embed_tokens`, T5's `shared`, ...,
  and whatever shares their weight), of the output head (the decoder's weight and bias, T5's
  untied `lm_head`) and of the head's own output bias (BERT's `cls.predictions.bias`);
- `final_logits_bias` [1, V] of BART / mBART / Marian (axis 1), added to the logits;
- MobileBERT's `cls.predictions.dense.weight` [H - E, V] (axis 1), which its head concatenates
  with the decoder's weight.

Any other tensor with a vocabulary-sized axis is a UserError naming it, raised before anything
is changed: re-indexing it or leaving it would each be a guess.
"""

from __future__ import annotations

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.vocab.select import id_map_for

SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                   "unk_token_id", "mask_token_id", "decoder_start_token_id", "forced_bos_token_id",
                   "forced_eos_token_id")
# module names (last part) of token embeddings, whatever their class
TOKEN_EMBEDDINGS = ("word_embeddings", "embed_tokens", "shared", "tok_embeddings", "wte", "embed_in")
# tensors indexed by token id along another axis than their first: name suffix -> axis
OTHER_AXES = {"final_logits_bias": 1, "cls.predictions.dense.weight": 1}


def other_vocab_axis(name: str) -> int | None:
    """The token axis of a tensor (full name) indexed by token id along another axis than its
    first (OTHER_AXES), or None."""
    return next((axis for suffix, axis in OTHER_AXES.items() if name == suffix or name.endswith("." + suffix)), None)


def _places(model) -> dict[int, list[tuple]]:
    """id(tensor) -> [(module, attribute, full name)] for every parameter and buffer (a tied
    parameter is one object in several modules)."""
    where: dict[int, list[tuple]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for kind in (module._parameters, module._buffers):
            for attr, tensor in kind.items():
                if tensor is not None:
                    full = f"{module_name}.{attr}" if module_name else attr
                    where.setdefault(id(tensor), []).append((module, attr, full))
    return where


def vocab_tensors(model, old_size: int) -> list[tuple]:
    """[(tensor, axis)] of every tensor indexed by token id (each once), the axis of size
    `old_size`. A tensor with such an axis that the model is not known to index by token id is a
    UserError naming it."""
    import torch

    known: dict[int, tuple] = {}

    def add(tensor, axis: int) -> None:
        if tensor is not None and tensor.dim() > axis and tensor.shape[axis] == old_size:
            known[id(tensor)] = (tensor, axis)

    add(model.get_input_embeddings().weight, 0)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.rpartition(".")[2] in TOKEN_EMBEDDINGS:
            add(module.weight, 0)
    decoder = model.get_output_embeddings()
    if decoder is not None:
        add(decoder.weight, 0)
        add(getattr(decoder, "bias", None), 0)
        parent_bias = getattr(_parent_of(model, decoder), "bias", None)
        if isinstance(parent_bias, torch.Tensor) and parent_bias.dim() == 1:
            add(parent_bias, 0)
    where = _places(model)
    for places in where.values():
        for module, attr, full in places:
            axis = other_vocab_axis(full)
            if axis is not None:
                add(getattr(module, attr), axis)
    for places in where.values():
        module, attr, full = places[0]
        tensor = getattr(module, attr)
        if id(tensor) not in known and old_size in tuple(tensor.shape):
            raise UserError(f"cannot trim: the model's tensor {full} {list(tensor.shape)} has an axis of the "
                            f"vocabulary's size ({old_size:,}) that trim does not know to be indexed by token id; "
                            "nothing was written (please report the model)")
    return list(known.values())


def _parent_of(model, module):
    for name, candidate in model.named_modules():
        if candidate is module:
            return model.get_submodule(name.rpartition(".")[0])
    raise ValueError("module not found in model")


def trim_model_vocab(model, kept_ids: np.ndarray) -> dict:
    """In place: keep `kept_ids` (int64[V_new], ascending) along the token axis of every
    vocabulary-indexed tensor, keep ties, remap the config's special ids. Returns the number of
    vocabulary parameters before and after."""
    import torch

    kept = torch.as_tensor(kept_ids, dtype=torch.long)
    embeddings = model.get_input_embeddings()
    old_size = embeddings.weight.shape[0]
    id_map = id_map_for(kept_ids, old_size)
    roberta_pad = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if roberta_pad is not None and id_map[roberta_pad] != roberta_pad:
        raise UserError(f"cannot trim: position ids depend on the pad id {roberta_pad}, which would move to "
                        f"{id_map[roberta_pad]}; keep every token before it")
    tensors = vocab_tensors(model, old_size)  # raises before anything changes
    decoder = model.get_output_embeddings()
    # tied stays tied (one object, re-indexed once, put back everywhere); untied stays untied (a
    # real mT5's lm_head, which transformers unties on loading whatever the config says)
    tied = decoder is not None and decoder.weight is embeddings.weight
    before = sum(t.numel() for t, _ in tensors if isinstance(t, torch.nn.Parameter))
    where = _places(model)
    after = 0
    for tensor, axis in tensors:
        selected = tensor.detach().index_select(axis, kept)
        after += selected.numel() if isinstance(tensor, torch.nn.Parameter) else 0
        if isinstance(tensor, torch.nn.Parameter):
            selected = torch.nn.Parameter(selected, requires_grad=tensor.requires_grad)
        for module, attr, _ in where[id(tensor)]:
            setattr(module, attr, selected)
            if isinstance(module, torch.nn.Embedding):
                module.num_embeddings = len(kept_ids)
                if module.padding_idx is not None:
                    module.padding_idx = int(id_map[module.padding_idx])
            elif isinstance(module, torch.nn.Linear) and attr == "weight":
                if axis == 0:
                    module.out_features = len(kept_ids)
                else:
                    module.in_features = len(kept_ids)
    config = model.config
    config.vocab_size = len(kept_ids)
    for sub in ("text_config", "decoder"):  # composite configs that hold the vocabulary size again
        inner = getattr(config, sub, None)
        if getattr(inner, "vocab_size", None) == old_size:
            inner.vocab_size = len(kept_ids)
    remap_special_ids(config, id_map)
    if getattr(model, "generation_config", None) is not None:
        remap_special_ids(model.generation_config, id_map)
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError("the output decoder lost its tie to the input embedding")
    return {"before": before, "after": after}


def remap_special_ids(config, id_map: np.ndarray) -> None:
    for key in SPECIAL_ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < len(id_map):
            setattr(config, key, int(id_map[value]))
        elif isinstance(value, list) and all(isinstance(v, int) and 0 <= v < len(id_map) for v in value):
            setattr(config, key, [int(id_map[v]) for v in value])  # several eos ids (generation configs)
