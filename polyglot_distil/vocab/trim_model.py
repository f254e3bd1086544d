"""Trimming a model's vocabulary-indexed tensors: input embedding, MLM decoder and its biases.

`trim_model_vocab(model, kept_ids)` keeps rows `kept_ids` of every tensor indexed by token id,
keeps ties (a tied decoder stays tied) and remaps the config's special ids; everything else is
left as it was, so on kept ids the trimmed model computes exactly what the source does.
"""

from __future__ import annotations

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.vocab.select import id_map_for

SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                   "unk_token_id", "mask_token_id", "decoder_start_token_id")


def _vocab_parameters(model):
    """The vocabulary-indexed parameters: input embedding, output decoder weight and bias, and
    the head's own output bias (BERT's `cls.predictions.bias`, XLM-R's `lm_head.bias`)."""
    size = model.get_input_embeddings().weight.shape[0]
    params = [model.get_input_embeddings().weight]
    decoder = model.get_output_embeddings()
    if decoder is not None:
        params += [p for p in (decoder.weight, getattr(decoder, "bias", None)) if p is not None]
        parent = _parent_of(model, decoder)
        bias = getattr(parent, "bias", None)
        if bias is not None and tuple(bias.shape) == (size,):
            params.append(bias)
    unique = {id(p): p for p in params}
    return list(unique.values())


def _parent_of(model, module):
    for name, candidate in model.named_modules():
        if candidate is module:
            return model.get_submodule(name.rpartition(".")[0])
    raise ValueError("module not found in model")


def trim_model_vocab(model, kept_ids: np.ndarray) -> dict:
    """In place: keep rows `kept_ids` (int64[V_new], ascending) of every vocabulary-indexed
    tensor, keep ties, remap the config's special ids. Returns vocabulary parameter counts."""
    import torch

    kept = torch.as_tensor(kept_ids, dtype=torch.long)
    embeddings = model.get_input_embeddings()
    old_size = embeddings.weight.shape[0]
    id_map = id_map_for(kept_ids, old_size)
    roberta_pad = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if roberta_pad is not None and id_map[roberta_pad] != roberta_pad:
        raise UserError(f"cannot trim: position ids depend on the pad id {roberta_pad}, which would move to "
                        f"{id_map[roberta_pad]}; keep every token before it")
    vocab_params = _vocab_parameters(model)
    before = sum(p.numel() for p in vocab_params)
    # A tied parameter is one object in several modules: re-index it once, put it back everywhere.
    where: dict[int, list] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            where.setdefault(id(param), []).append((module, name))
    for param in vocab_params:
        selected = torch.nn.Parameter(param.detach().index_select(0, kept), requires_grad=param.requires_grad)
        for module, name in where[id(param)]:
            setattr(module, name, selected)
    embeddings.num_embeddings = len(kept_ids)
    if embeddings.padding_idx is not None:
        embeddings.padding_idx = int(id_map[embeddings.padding_idx])
    decoder = model.get_output_embeddings()
    if decoder is not None:
        decoder.out_features = len(kept_ids)
    config = model.config
    config.vocab_size = len(kept_ids)
    remap_special_ids(config, id_map)
    if getattr(model, "generation_config", None) is not None:
        remap_special_ids(model.generation_config, id_map)
    if decoder is not None and getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        if decoder.weight is not embeddings.weight:
            raise RuntimeError("the MLM decoder lost its tie to the input embedding")
    return {"before": before, "after": sum(p.numel() for p in _vocab_parameters(model))}


def remap_special_ids(config, id_map: np.ndarray) -> None:
    for key in SPECIAL_ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < len(id_map):
            setattr(config, key, int(id_map[value]))

