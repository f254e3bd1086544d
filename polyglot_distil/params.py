"""One parameter counter: what `trim`, `student`, `eval` and the benchmarks report."""

from __future__ import annotations


def count_parameters(model) -> dict:
    """{"total", "embedding", "bytes"} of a torch module. Tied weights count once (a tied MLM
    decoder adds nothing); "embedding" is the word, position and token-type tables."""
    import torch

    seen: set[int] = set()
    embedding = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            embedding += module.weight.numel()
    params = list(model.parameters())  # distinct Parameter objects: tied ones appear once
    return {"total": sum(p.numel() for p in params), "embedding": embedding,
            "bytes": sum(p.numel() * p.element_size() for p in params)}
