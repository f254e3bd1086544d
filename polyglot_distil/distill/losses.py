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
             rows: float | None = None) -> torch.Tensor:
    """KL(teacher || student) between the softmaxes at `temperature` of logits [N, V], summed
    over V, averaged over the N positions (or `rows`), times temperature² (DistilBERT; Hinton et
    al.). Gradients flow to the student's logits only."""
    return _LogitKL.apply(student_logits, teacher_logits.detach(), temperature,
                          float(student_logits.shape[0] if rows is None else rows))


class _LogitKL(torch.autograd.Function):
    """`logit_kl` with its gradient written out, T (softmax_S - softmax_T) / N per row, computed a
    block of rows at a time on CPU: the loss is a dozen elementwise passes over the [N, V] logits,
    and on blocks that fit in the cache they run about twice as fast as autograd through
    log_softmax and kl_div over the whole matrix."""

    BLOCK_ELEMENTS = 1 << 18  # 1 MiB of float32 per block

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature, denominator):
        rows, vocab = student_logits.shape
        # On an accelerator, blocks would only add kernel launches: one block of every row.
        step = max(1, _LogitKL.BLOCK_ELEMENTS // vocab) if student_logits.device.type == "cpu" else max(1, rows)
        student_log_probs = torch.empty(rows, vocab, dtype=torch.float32, device=student_logits.device)
        teacher_probs = torch.empty_like(student_log_probs)
        kl = student_log_probs.new_zeros(())
        for start in range(0, rows, step):
            block = slice(start, start + step)
            s_log = torch.log_softmax(student_logits[block].float() / temperature, dim=-1)
            t_log = torch.log_softmax(teacher_logits[block].float() / temperature, dim=-1)
            t_probs = t_log.exp()
            kl += (t_probs * (t_log - s_log)).sum()
            student_log_probs[block], teacher_probs[block] = s_log, t_probs
        ctx.save_for_backward(student_log_probs, teacher_probs)
        ctx.temperature, ctx.dtype, ctx.step, ctx.denominator = temperature, student_logits.dtype, step, denominator
        return kl / denominator * temperature**2

    @staticmethod
    def backward(ctx, grad_output):
        student_log_probs, teacher_probs = ctx.saved_tensors
        scale = grad_output * ctx.temperature / ctx.denominator
        grad = torch.empty_like(student_log_probs)
        for start in range(0, grad.shape[0], ctx.step):
            block = slice(start, start + ctx.step)
            torch.exp(student_log_probs[block], out=grad[block]).sub_(teacher_probs[block]).mul_(scale)
        return grad.to(ctx.dtype), None, None, None


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
