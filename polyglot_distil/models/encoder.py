"""What the losses read from an encoder: hidden states, attention maps, MLM logits at chosen
positions; and the longest input a model takes.
"""

from __future__ import annotations

from polyglot_distil.errors import UserError

ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")


def max_positions(config) -> int:
    """Longest input the model takes, in tokens. RoBERTa-style position ids start after the
    padding id, which costs pad_token_id + 1 positions."""
    limit = int(getattr(config, "max_position_embeddings", 0) or 10**9)
    offset = config.pad_token_id + 1 if getattr(config, "model_type", None) in ROBERTA_FAMILY else 0
    return limit - offset


def mlm_head(model):
    """The masked-LM head of a `...ForMaskedLM` model (BERT `cls`, XLM-R `lm_head`): the one child
    module that is not the encoder."""
    heads = [module for module in model.children() if module is not model.base_model]
    if len(heads) != 1 or model.get_output_embeddings() is None:
        raise UserError(f"{type(model).__name__} has no masked-LM head; the logit and MLM losses need one "
                        "(the hidden and attention losses, --recipe bistil, do not)")
    return heads[0]


# (query, key, value) projection names: BERT, XLM-R and E5; most newer encoders; DistilBERT
PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))


def encoder_layers(model):
    """The encoder's transformer layers (a ModuleList of config.num_hidden_layers blocks)."""
    import torch

    count = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"{type(model).__name__}: found no list of its {count} transformer layers")


def attention_projections(model, layer: int) -> tuple:
    """The query, key and value projections (nn.Linear, in that order) of the self-attention of
    encoder layer `layer` (0-based): their outputs are the layer's queries, keys and values."""
    import torch

    for module in encoder_layers(model)[layer].modules():
        for names in PROJECTION_NAMES:
            if all(isinstance(getattr(module, name, None), torch.nn.Linear) for name in names):
                return tuple(getattr(module, name) for name in names)
    raise UserError(f"{type(model).__name__}: its self-attention has no query/key/value projections that "
                    f"polyglot-distil knows ({', '.join('/'.join(n) for n in PROJECTION_NAMES)}); the relation "
                    "loss reads them")


def has_mlm_output(model) -> bool:
    return model is not model.base_model and model.get_output_embeddings() is not None


def _attention_recorder(model):
    """(is this module one whose output holds an attention map, the output's index) from the
    model's own output recording (transformers' `_can_record_outputs`), or None."""
    spec = (getattr(model.base_model, "_can_record_outputs", None) or {}).get("attentions")
    spec = spec[0] if isinstance(spec, list) and len(spec) == 1 else spec
    if spec is None or isinstance(spec, list):
        return None
    index = getattr(spec, "index", 1) if not isinstance(spec, (str, type)) else 1
    target = getattr(spec, "target_class", spec) if not isinstance(spec, (str, type)) else spec
    name = getattr(spec, "class_name", None) if not isinstance(spec, (str, type)) else None
    if isinstance(target, str):
        name, target = target, None
    if target is None and name is None:
        return None
    return (lambda module: isinstance(module, target)) if target is not None else \
        (lambda module: type(module).__name__ == name), index


def _capture_attentions(model, layers, captured: dict, hooks: list) -> bool:
    """Hooks that keep the attention maps of encoder layers `layers` only, in `captured[k]`;
    False when the model does not say which module gives them (the caller asks for all then)."""
    recorder = _attention_recorder(model)
    if recorder is None:
        return False
    is_attention, index = recorder
    stack = encoder_layers(model)
    found = {}
    for k in layers:
        modules = [m for m in stack[k].modules() if is_attention(m)]
        if len(modules) != 1:
            return False
        found[k] = modules[0]
    for k, module in found.items():
        hooks.append(module.register_forward_hook(
            lambda module, args, output, k=k: captured.__setitem__(k, output[index])))
    return True


def encoder_outputs(model, input_ids, attention_mask, hidden_states=False, attentions=False,
                    logit_rows=None, relation_layer: int | None = None) -> dict:
    """Run a masked-LM model's encoder, and its head only at the positions `logit_rows` (bool
    [B, L]), never over every position unless asked. Returns "last" [B, L, H]; "hidden": L+1
    tensors [B, L, H] (0 = embedding output) or None; "attentions": one [B, A, L, L] per layer or
    None (needs eager attention); "logits" [N, V] at the N positions of `logit_rows`, if given;
    "qkv": the queries, keys and values [B, L, H] of layer `relation_layer`'s self-attention, if
    given (from hooks, so the fast attention kernel still runs).

    `hidden_states` and `attentions` may name the indices a loss reads (hidden state k, attention
    map of layer k) instead of True: only those are kept, returned as {k: tensor}, the others
    freed as the forward goes (a teacher whose student imitates every other layer)."""
    captured: dict = {}
    maps: dict = {}
    hooks = []
    hidden_wanted = hidden_states if isinstance(hidden_states, bool) else sorted(set(hidden_states))
    attention_wanted = attentions if isinstance(attentions, bool) else sorted(set(attentions))
    if relation_layer is not None:
        for name, projection in zip("qkv", attention_projections(model, relation_layer)):
            hooks.append(projection.register_forward_hook(
                lambda module, args, output, name=name: captured.__setitem__(name, output)))
    try:
        hooked = not isinstance(attention_wanted, bool) and _capture_attentions(model, attention_wanted, maps, hooks)
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                               output_hidden_states=hidden_wanted if hidden_wanted != [] else False,
                               output_attentions=bool(attention_wanted) and not hooked)
    finally:
        for hook in hooks:
            hook.remove()
    hidden = out.hidden_states if hidden_wanted is True else None
    if not isinstance(hidden_wanted, bool):
        hidden = {k: out.hidden_states[k] for k in hidden_wanted}
    maps_out = out.attentions if attention_wanted is True else None
    if not isinstance(attention_wanted, bool):
        maps_out = maps if hooked else {k: out.attentions[k] for k in attention_wanted}
    result = {"last": out.last_hidden_state, "hidden": hidden, "attentions": maps_out}
    if relation_layer is not None:
        result["qkv"] = (captured["q"], captured["k"], captured["v"])
    if logit_rows is not None:
        result["logits"] = mlm_head(model)(out.last_hidden_state[logit_rows])
    return result


def classifier_outputs(out, hidden_states: bool, attentions: bool) -> dict:
    """A sequence classifier's output in the form `encoder_outputs` gives (the losses read both)."""
    return {"hidden": out.hidden_states if hidden_states else None,
            "attentions": out.attentions if attentions else None, "logits": out.logits}
