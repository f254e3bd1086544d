"""Distillation losses: small pure functions, shapes documented (torchtune kd_losses style).

Shapes: B batch, L sequence length, H hidden size, A attention heads, N selected positions,
V vocabulary. `mask` is the attention mask [B, L] (1 = token, 0 = padding); every loss ignores
padding. Each returns a scalar; reductions are stated per function. Probabilities are computed
in float32 whatever the autocast dtype.

The token-averaged losses take an optional count to average over (`tokens`, `token_pairs`,
`rows`, `labelled`; default: this batch's own). The training loop passes the global batch's
count divided by the number of micro-batches it is cut into, so the micro-batches' losses
average to the global batch's mean, whatever the processes and accumulation steps; with padded
or unevenly masked micro-batches, means of micro-batch means would not.

    loss = hidden_mse(student_states, teacher_states, mask) + attention_mse(s_maps, t_maps, mask)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor,
               tokens: float | None = None) -> torch.Tensor:
    """Mean over the paired layers of the MSE between hidden states [B, L, H], averaged over
    non-padding tokens (or `tokens`) and the H features (BiStil: student state i against teacher
    state 2i)."""
    weights = mask.to(torch.float32)
    denominator = (weights.sum() if tokens is None else tokens) * student[0].shape[-1]
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        total = total + ((s.float() - t.float()).pow(2).sum(-1) * weights).sum() / denominator
    return total / len(student)


def attention_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor,
                  token_pairs: float | None = None) -> torch.Tensor:
    """Mean over the paired layers of the MSE between attention probabilities [B, A, L, L],
    averaged over the heads and the (query, key) pairs where both are tokens (or `token_pairs`,
    the sum over rows of length²). (BiStil keeps the entries where the teacher's probability is
    non-zero, which drops padding keys only.)"""
    weights = mask.to(torch.float32)
    pairs = weights[:, None, :, None] * weights[:, None, None, :]  # [B, 1, L, L]
    denominator = (pairs.sum() if token_pairs is None else token_pairs) * student[0].shape[1]
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        total = total + ((s.float() - t.float()).pow(2) * pairs).sum() / denominator
    return total / len(student)


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
             rows: float | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """KL(teacher || student) between the softmaxes at `temperature` of logits [N, V], summed
    over V, averaged over the N positions (or `rows`), times temperature² (DistilBERT; Hinton et
    al.). Gradients flow to the student's logits only.

    Computed `chunk_rows` rows at a time (default: 1 MiB of float32 per chunk on CPU, 128 MiB on
    an accelerator), the softmaxes recomputed in the backward pass: beyond the two logit matrices
    and the student's gradient, memory is one chunk's temporaries and two floats per row, where
    autograd through log_softmax and kl_div over the whole matrix keeps float32 [N, V] softmaxes
    and temporaries (about 10 GB at 8 x 256 tokens on an untrimmed XLM-R vocabulary). The cost:
    the backward pass redoes the two exponentials of the forward."""
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    return _LogitKL.apply(student_logits, teacher_logits.detach(), temperature,
                          float(student_logits.shape[0] if rows is None else rows), chunk_rows)


class _LogitKL(torch.autograd.Function):
    """`logit_kl` with its gradient written out, T (softmax_S - softmax_T) / N per row, a chunk of
    rows at a time. The forward saves the logits (which exist anyway) and each row's log-sum-exp
    of the student's and the teacher's scaled logits [N]; the backward recomputes each chunk's two
    softmaxes from them (one exp each) and writes the chunk's gradient in the student's dtype. On
    CPU the chunks fit in the cache, where the dozen elementwise passes run about twice as fast
    as over the whole matrix."""

    CPU_CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32 per temporary
    DEVICE_CHUNK_ELEMENTS = 1 << 25  # 128 MiB of float32 per temporary: few kernel launches, bounded memory

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature, denominator, chunk_rows):
        rows, vocab = student_logits.shape
        on_cpu = student_logits.device.type == "cpu"
        elements = _LogitKL.CPU_CHUNK_ELEMENTS if on_cpu else _LogitKL.DEVICE_CHUNK_ELEMENTS
        step = chunk_rows or max(1, elements // max(vocab, 1))
        student_lse = torch.empty(rows, dtype=torch.float32, device=student_logits.device)
        teacher_lse = torch.empty_like(student_lse)
        kl = student_lse.new_zeros(())
        for start in range(0, rows, step):
            chunk = slice(start, start + step)
            s_scaled = student_logits[chunk].float() / temperature
            t_scaled = teacher_logits[chunk].float() / temperature
            student_lse[chunk] = torch.logsumexp(s_scaled, dim=-1)
            teacher_lse[chunk] = torch.logsumexp(t_scaled, dim=-1)
            t_log = t_scaled.sub_(teacher_lse[chunk, None])
            s_log = s_scaled.sub_(student_lse[chunk, None])
            kl += (t_log.exp() * (t_log - s_log)).sum()
        ctx.save_for_backward(student_logits, teacher_logits, student_lse, teacher_lse)
        ctx.temperature, ctx.step, ctx.denominator = temperature, step, denominator
        return kl / denominator * temperature**2

    @staticmethod
    def backward(ctx, grad_output):
        student_logits, teacher_logits, student_lse, teacher_lse = ctx.saved_tensors
        temperature = ctx.temperature
        scale = grad_output * temperature / ctx.denominator
        grad = torch.empty_like(student_logits)
        for start in range(0, grad.shape[0], ctx.step):
            chunk = slice(start, start + ctx.step)
            s_probs = (student_logits[chunk].float() / temperature).sub_(student_lse[chunk, None]).exp_()
            t_probs = (teacher_logits[chunk].float() / temperature).sub_(teacher_lse[chunk, None]).exp_()
            grad[chunk] = s_probs.sub_(t_probs).mul_(scale)
        return grad, None, None, None, None


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
                       ) -> torch.Tensor:
    """Cross-entropy of the student's softmax at `temperature` against the teacher's, for logits
    [N, C]: mean over N of -sum_c p_T log p_S, without a temperature² factor (BiStil's task phase)."""
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(teacher_probs * student_log_probs).sum(-1).mean()


def mlm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, labelled: float | None = None) -> torch.Tensor:
    """Masked-LM cross-entropy of logits [N, V] against token ids [N] (-100 = ignore), mean over
    the labelled positions (or `labelled` of them)."""
    if labelled is None:
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum") / labelled


def cosine_hidden(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  tokens: float | None = None) -> torch.Tensor:
    """Mean over non-padding tokens (or `tokens`) of 1 - cos(student, teacher) for hidden states
    [B, L, H] (DistilBERT's cosine loss on the last hidden states)."""
    weights = mask.to(torch.float32)
    cosine = F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # [B, L]
    return ((1 - cosine) * weights).sum() / (weights.sum() if tokens is None else tokens)


def self_attention_relations(vectors: torch.Tensor, relation_heads: int, mask: torch.Tensor) -> torch.Tensor:
    """MiniLMv2's relation of queries, keys or values [B, L, H] with themselves, as log
    probabilities [B, R, L, L]: the H features are cut into R relation heads of d_r = H / R (the
    attention heads concatenated, then split), and row i of head r is log softmax_j(x_ri . x_rj /
    sqrt(d_r)) over the non-padding tokens j (a padding column gets probability 0)."""
    batch, length, width = vectors.shape
    size = width // relation_heads
    split = vectors.float().view(batch, length, relation_heads, size).transpose(1, 2)  # [B, R, L, d_r]
    scores = split @ split.transpose(-1, -2) / size**0.5
    # A finite fill (not -inf): the KL's p_T (log p_T - log p_S) is then 0, not nan, at padding.
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(torch.float32).min)
    return F.log_softmax(scores, dim=-1)


def attention_relation_kl(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor,
                          relation_heads: int, tokens: float | None = None) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation loss between one teacher layer and one student
    layer: `student` and `teacher` are the (queries, keys, values) of that layer's attention, each
    [B, L, H_S] and [B, L, H_T] (the widths may differ; both must be multiples of R =
    `relation_heads`). For each of the q-q, k-k and v-v relations: KL(teacher relation || student
    relation) summed over the key tokens, averaged over the R relation heads and the non-padding
    query tokens (or `tokens`); the three are added (the paper's weights: 1 each)."""
    weights = mask.to(torch.float32)
    denominator = (weights.sum() if tokens is None else tokens) * relation_heads
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        s_log = self_attention_relations(s, relation_heads, mask)
        t_log = self_attention_relations(t.detach(), relation_heads, mask)
        kl = (t_log.exp() * (t_log - s_log)).sum(-1)  # [B, R, L]
        total = total + (kl * weights[:, None, :]).sum() / denominator
    return total
