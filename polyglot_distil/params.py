"""One parameter counter: what `trim`, `student`, `eval` and the benchmarks report."""

from __future__ import annotations


def count_parameters(model) -> dict:
    """{"total", "embedding", "bytes"} of a torch module. Tied weights count once (a tied MLM
    decoder adds nothing); "embedding" is the word, position and token-type tables. Int8 modules
    (PyTorch's dynamic int8 Linear, `models.quantized`' int8 embeddings) count their weights at
    one byte each; a model that is no torch module (an ONNX graph) counts itself
    (`parameter_counts()`)."""
    import torch

    if hasattr(model, "parameter_counts"):
        return model.parameter_counts()
    seen: set[int] = set()
    embedding = total = size = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            embedding += module.weight.numel()
        elif hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):  # dynamic int8 Linear
            weight, bias = module.weight(), module.bias()
            total += weight.numel() + (0 if bias is None else bias.numel())
            size += weight.numel() + 4 * weight.shape[0] + (0 if bias is None else bias.numel() * bias.element_size())
        elif isinstance(getattr(module, "weight_int8", None), torch.Tensor):  # int8 embedding table
            rows = module.weight_int8
            embedding += rows.numel()
            total += rows.numel()
            size += rows.numel() + module.weight_scale.numel() * module.weight_scale.element_size()
    params = list(model.parameters())  # distinct Parameter objects: tied ones appear once
    return {"total": total + sum(p.numel() for p in params), "embedding": embedding,
            "bytes": size + sum(p.numel() * p.element_size() for p in params)}
