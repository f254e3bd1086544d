"""What the losses read from an encoder: hidden states, attention maps, MLM logits at chosen
positions; and the longest input a model takes.
"""

from __future__ import annotations

from polyglot_distil.models.families import family_of


def max_positions(config) -> int:
    """Longest input the model takes, in tokens. RoBERTa-style position ids start after the
    padding id, which costs pad_token_id + 1 positions."""
    return family_of(config).max_positions(config)


def mlm_head(model) -> list:
    """The modules of a `...ForMaskedLM` model's masked-LM head (BERT `cls`, XLM-R `lm_head`,
    DistilBERT's four, ...; models/families.py), or a UserError without one."""
    return family_of(model).mlm_head(model)


def encoder_layers(model) -> list:
    """The encoder's transformer layers, one module per layer (config.num_hidden_layers; ALBERT's
    shared layer repeated)."""
    return family_of(model).layers(model)


def attention_projections(model, layer: int) -> tuple:
    """(projections, fused): the query, key and value projections (nn.Linear, in that order) of
    the self-attention of encoder layer `layer` (0-based), or one fused q|k|v projection."""
    return family_of(model).projections_of(model, layer)


def has_mlm_output(model) -> bool:
    return bool(family_of(model).head_modules(model))


def _hook_calls(module, serves: list[int], wanted, on_output, hooks: list) -> None:
    """A forward hook on `module`, which runs as encoder layers `serves` (in order; several for
    ALBERT's shared layer): its i-th call in a forward is layer serves[i], and `on_output(k,
    output)` sees the calls of the layers in `wanted`."""
    calls = [0]

    def hook(module, args, output):
        k = serves[calls[0] % len(serves)]
        calls[0] += 1
        if k in wanted:
            on_output(k, output)
    hooks.append(module.register_forward_hook(hook))


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
    wanted = set(layers)
    for module in {id(m): m for m in found.values()}.values():
        serves = [k for k, layer in enumerate(stack) if any(m is module for m in layer.modules())]
        _hook_calls(module, serves, wanted, lambda k, output: captured.__setitem__(k, output[index]), hooks)
    return True


def _capture_qkv(model, layer: int, captured: dict, hooks: list) -> None:
    """Hooks that keep layer `layer`'s queries, keys and values [B, L, H] in captured["q"], ["k"],
    ["v"] (a fused projection's output split in three): each projection's first call while that
    layer runs (DeBERTa's also project the relative position embeddings, after the tokens)."""
    projections, fused = attention_projections(model, layer)
    stack = encoder_layers(model)
    serves = [k for k, module in enumerate(stack) if module is stack[layer]]
    running = {"layer": None, "calls": 0}

    def enter(module, args):
        running["layer"] = serves[running["calls"] % len(serves)]
        running["calls"] += 1

    def keep(module, args, output, name):
        if running["layer"] == layer and name not in captured:
            captured.update(zip("qkv", output.chunk(3, dim=-1)) if fused else {name: output})
    hooks.append(stack[layer].register_forward_pre_hook(enter))
    for name, projection in zip("qkv", projections):
        hooks.append(projection.register_forward_hook(
            lambda module, args, output, name=name: keep(module, args, output, name)))


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
    try:
        if relation_layer is not None:
            _capture_qkv(model, relation_layer, captured, hooks)
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
        result["logits"] = family_of(model).mlm_logits(model, out.last_hidden_state[logit_rows])
    return result


def classifier_outputs(out, hidden_states: bool, attentions: bool) -> dict:
    """A sequence classifier's output in the form `encoder_outputs` gives (the losses read both)."""
    return {"hidden": out.hidden_states if hidden_states else None,
            "attentions": out.attentions if attentions else None, "logits": out.logits}
