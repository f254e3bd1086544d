"""Which attention heads, feed-forward neurons and hidden features of a teacher matter: first-order
importance scores on a sample of text, for a narrower student initialised from the teacher's
most important parts (ETD-Impt, "extract then distill"; head importance as Michel et al. 2019).

    polyglot-distil student --teacher out/trimmed --init importance --heads 8 --intermediate-size 1024 \
        --importance-text fr=corpora/fr/sample.txt --importance-text en=corpora/en/sample.txt --out out/student

A part's score is |weight x gradient| summed over the weights that carry its output, which is
the gradient of the loss with respect to a gate on that output (1 = kept, 0 = removed):

    head a of layer l     |sum of w * dL/dw over the attention output projection's columns of head a|
    neuron n of layer l   |sum of w * dL/dw over the FFN output projection's column n|
    hidden feature d      |sum over every LayerNorm of gamma_d dL/dgamma_d + beta_d dL/dbeta_d|
                          (the residual stream leaves each LayerNorm: CoFi's shared hidden gate)

summed over batches (the absolute value per batch). The loss is the masked-LM cross-entropy when
the model has an MLM head, else a hidden-state reconstruction loss: the MSE, at the masked
positions, between the last hidden states of the masked text and those of the unmasked text
(the latter a fixed target). Text: each language's lines (`--importance-lines` of them, a
seeded sample) cut into blocks of 128 tokens and masked as in phase 1 (15%, 80/10/10).
"""

from __future__ import annotations

from polyglot_distil.errors import UserError

BLOCK_TOKENS = 128
BATCH_BLOCKS = 8


def importance_batches(tokenizer, languages: dict, max_lines: int, vocab_rows: int, seed: int = 0,
                       block_size: int = BLOCK_TOKENS) -> list[dict]:
    """Masked batches of every language's text: {"input_ids", "attention_mask", "labels"} int64
    [<= BATCH_BLOCKS, block_size] each, deterministic for `seed`."""
    import numpy as np
    import torch

    from polyglot_distil.data.corpus import Caps, iter_language
    from polyglot_distil.data.mlm import Masking, encode_text, mask_tokens, to_blocks

    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if first is None or last is None or tokenizer.mask_token_id is None:
        raise UserError("the tokenizer has no [CLS]/[SEP] (or <s>/</s>) and mask tokens, which the importance "
                        "scores' masked text needs")
    masking = Masking.for_tokenizer(tokenizer, vocab_rows)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for lang, sources in languages.items():
        ids = encode_text(iter_language(sources, Caps(max_lines=max_lines, seed=seed)), tokenizer)
        blocks = to_blocks(ids, block_size, first, last)
        if len(blocks) == 0:
            where = ", ".join(str(s) for s in sources)
            raise UserError(f"--importance-text {lang}={where}: {len(ids):,} tokens, less than one block of "
                            f"{block_size}; give more text (or raise --importance-lines)")
        for start in range(0, len(blocks), BATCH_BLOCKS):
            input_ids = torch.from_numpy(blocks[start:start + BATCH_BLOCKS].astype(np.int64))
            masked, labels = mask_tokens(input_ids, masking, generator)
            batches.append({"input_ids": masked, "clean_ids": input_ids, "attention_mask": torch.ones_like(masked),
                            "labels": labels})
    return batches


def bert_parts(model):
    """Per encoder layer, the attention output projection and the FFN output projection (BERT
    layout: BERT, XLM-R, E5), and every LayerNorm over the hidden features."""
    import torch

    from polyglot_distil.models.encoder import encoder_layers

    attention_out, ffn_out = [], []
    for index, layer in enumerate(encoder_layers(model)):
        try:
            attention_out.append(layer.attention.output.dense)
            ffn_out.append(layer.output.dense)
        except AttributeError:
            raise UserError(f"{type(model).__name__}: layer {index} is not laid out as BERT's (attention.output.dense, "
                            "output.dense); --init importance knows BERT, XLM-R and E5 layers") from None
    width = model.config.hidden_size
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) and tuple(m.normalized_shape) == (width,)]
    return attention_out, ffn_out, norms


def importance_loss(model, batch: dict):
    """The masked-LM cross-entropy at the masked positions, or (no MLM head) the MSE there between
    the masked text's last hidden states and the unmasked text's."""
    import torch
    import torch.nn.functional as F

    from polyglot_distil.models.encoder import encoder_outputs, has_mlm_output

    def at_least_float32(x):
        return x.to(torch.promote_types(x.dtype, torch.float32))

    rows = batch["labels"] != -100
    if has_mlm_output(model):
        out = encoder_outputs(model, batch["input_ids"], batch["attention_mask"], logit_rows=rows)
        return F.cross_entropy(at_least_float32(out["logits"]), batch["labels"][rows])
    with torch.no_grad():
        target = model.base_model(input_ids=batch["clean_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.mse_loss(at_least_float32(hidden[rows]), at_least_float32(target[rows]))


def importance_scores(model, batches: list[dict]) -> dict:
    """{"loss": "mlm" or "reconstruction", "heads": float [layers, A], "neurons": float [layers, I],
    "hidden": float [H]}: the scores of the module docstring, summed over `batches`."""
    import torch

    from polyglot_distil.models.encoder import has_mlm_output

    attention_out, ffn_out, norms = bert_parts(model)
    heads, head_size = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    params = [m.weight for m in attention_out] + [m.weight for m in ffn_out] + \
        [p for norm in norms for p in (norm.weight, norm.bias)]
    head_scores = torch.zeros(len(attention_out), heads)
    neuron_scores = torch.zeros(len(ffn_out), ffn_out[0].weight.shape[1])
    hidden_scores = torch.zeros(model.config.hidden_size)
    was_training = model.training
    model.eval()  # no dropout: the scores are a function of the weights and the text
    try:
        with torch.enable_grad():
            for batch in batches:
                grads = torch.autograd.grad(importance_loss(model, batch), params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
                products = [(p.detach().float() * g.float()) for p, g in zip(params, grads)]
                layers = len(attention_out)
                for index in range(layers):
                    per_column = products[index].sum(0)  # [A * head_size]
                    head_scores[index] += per_column.view(heads, head_size).sum(-1).abs()
                    neuron_scores[index] += products[layers + index].sum(0).abs()
                hidden_scores += torch.stack(products[2 * layers:]).sum(0).abs()
    finally:
        model.train(was_training)
    return {"loss": "mlm" if has_mlm_output(model) else "reconstruction", "heads": head_scores,
            "neurons": neuron_scores, "hidden": hidden_scores}


def top_indices(scores, count: int) -> list[int]:
    """The `count` highest-scoring indices, in increasing index order (ties: the lower index)."""
    import torch

    order = torch.argsort(scores, descending=True, stable=True)[:count]
    return sorted(int(i) for i in order)
