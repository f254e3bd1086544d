"""Prove that a trimmed model is the original on the text its vocabulary covers.

    polyglot-distil verify --original bert-base-multilingual-cased --trimmed models/mbert-en-fr \
        --lang en=../shared/data/xnli/test-en.tsv --lang fr=../shared/data/xnli/test-fr.tsv
    polyglot-distil verify ... --max-lines 500 --report verify.json

Per language, on each text (tokenizers' truncation and padding off):
- covered: its original tokenization uses only kept tokens;
- identical: the trimmed tokenizer gives the same token strings, and ids equal through `old_ids`;
- the unknown-token rate (of non-special tokens) before and after;
- on covered texts, the largest absolute difference of the last hidden states and of the MLM
  logits over the kept tokens. A sequence-to-sequence model (mT5, mBART) runs under teacher
  forcing, its decoder fed the text itself shifted right (`prepare_decoder_input_ids_from_labels`):
  its encoder's and decoder's last hidden states and the decoder's logits are compared, and both
  models generate GENERATE_TOKENS tokens greedily, which must be the same tokens (the original
  choosing among the kept tokens only). Both models are loaded in float32 with eager attention; the
  original's logits come from its decoder restricted to the kept rows (`F.linear(h, W[kept],
  b[kept])`, the shapes the trimmed decoder has), so equal means bitwise equal: the difference
  must be exactly 0. Texts longer than the model's positions are skipped and counted.

Exit status 1 when any covered text differs (tokenization or outputs), 0 otherwise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from polyglot_distil.data.corpus import Caps, group_lang_specs, iter_language
from polyglot_distil.errors import UserError
from polyglot_distil.tables import text_table
from polyglot_distil.models.checkpoint import checkpoint_files, has_pooler
from polyglot_distil.models.encoder import max_positions
from polyglot_distil.data.tokenization import untruncated
from polyglot_distil.models.loading import check_tokenizer_fits, load_model, load_tokenizer, model_class_for, \
    vocab_in_id_order
from polyglot_distil.options import APPEND, NO_PROGRESS, OVERWRITE, READS, SEED, TRUST_REMOTE_CODE, WRITES, \
    like, setting
from polyglot_distil.outputs import atomic_file, check_writable
from polyglot_distil.progress import progress
from polyglot_distil.vocab.trim_tokenizer import vocab_size
from polyglot_distil.vocab.select import id_map_for
from polyglot_distil.vocab.trim_model import other_vocab_axis


class EquivalenceError(UserError):
    """The trimmed model differs from the original on covered text."""


@dataclass
class LanguageCheck:
    """What `verify` found on one language's texts."""

    texts: int = 0
    covered: int = 0  # original tokenization uses only kept tokens
    identical: int = 0  # trimmed tokenization equals the original's (all texts)
    too_long: int = 0  # covered texts longer than the model's positions: not run
    compared: int = 0  # covered texts run through both models
    differing: int = 0  # covered texts whose tokenization or outputs differ
    tokens_before: int = 0  # non-special tokens, original tokenizer
    unk_before: int = 0
    tokens_after: int = 0
    unk_after: int = 0
    max_hidden_diff: float = 0.0  # max |h_original - h_trimmed| over covered texts
    max_logit_diff: float | None = None  # max |logits| difference over kept tokens; None without MLM head
    max_pooler_diff: float | None = None  # max |pooler output| difference; None when the source has no pooler
    generated: int | None = None  # seq2seq: covered texts whose greedy generations were compared; None otherwise

    @property
    def passed(self) -> bool:
        return self.differing == 0 and self.max_hidden_diff == 0 and not self.max_logit_diff \
            and not self.max_pooler_diff

    def as_dict(self) -> dict:
        return {**asdict(self), "covered_share": _ratio(self.covered, self.texts),
                "identical_share": _ratio(self.identical, self.texts),
                "unk_rate_before": _ratio(self.unk_before, self.tokens_before),
                "unk_rate_after": _ratio(self.unk_after, self.tokens_after), "passed": self.passed}


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# ---------------------------------------------------------------------------------------------
# Comparison


GENERATE_TOKENS = 4


class _KeptRowsDecoder:
    """Swap the original's MLM decoder for the same op on the kept rows only: F.linear with
    weight W[kept] (V_new x H) and bias b[kept], exactly the trimmed decoder's shapes (a
    full-vocabulary GEMM then a column selection rounds differently, by ~1e-7); and the head's
    tensors indexed by token id along another axis (BART's `final_logits_bias` [1, V],
    MobileBERT's `dense` [H - E, V], which it concatenates with the decoder's weight) for their
    kept columns."""

    def __init__(self, model, kept_ids: np.ndarray):
        import torch

        self.decoder = model.get_output_embeddings()
        self.model = model
        if self.decoder is None:
            return
        kept = torch.as_tensor(kept_ids, dtype=torch.long)
        # nn.Linear's forward is F.linear(x, weight, bias): the trimmed decoder's op and shapes
        self.kept = torch.nn.Linear(self.decoder.in_features, len(kept_ids), bias=self.decoder.bias is not None)
        self.kept.weight = torch.nn.Parameter(self.decoder.weight.detach().index_select(0, kept))
        if self.decoder.bias is not None:
            self.kept.bias = torch.nn.Parameter(self.decoder.bias.detach().index_select(0, kept))
        name = next(n for n, m in model.named_modules() if m is self.decoder)
        parent_name, _, self.attr = name.rpartition(".")
        self.parent = model.get_submodule(parent_name)
        self.columns = []  # (module, attribute, the tensor, its kept columns)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            axis = other_vocab_axis(name)
            # the name alone can mislead: RemBERT's head has a cls.predictions.dense too, [E_out, H]
            if axis is not None and tensor.dim() > axis and tensor.shape[axis] == self.decoder.out_features:
                module_name, _, attr = name.rpartition(".")
                columns = tensor.detach().index_select(axis, kept)
                if isinstance(tensor, torch.nn.Parameter):
                    columns = torch.nn.Parameter(columns)
                self.columns.append((model.get_submodule(module_name), attr, tensor, columns))

    def __enter__(self):
        if self.decoder is not None:
            setattr(self.parent, self.attr, self.kept)
            for module, attr, _, columns in self.columns:
                setattr(module, attr, columns)
        return self.decoder is not None

    def __exit__(self, *exc):
        if self.decoder is not None:
            setattr(self.parent, self.attr, self.decoder)
            for module, attr, tensor, _ in self.columns:
                setattr(module, attr, tensor)


def _padded(id_lists: list[list[int]], pad_id: int):
    import torch

    width = max(map(len, id_lists))
    ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for row, seq in enumerate(id_lists):
        ids[row, :len(seq)] = torch.as_tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask


def _tensor_differences(before, after, real):
    """Per text (bool[batch]) whether any real position differs, and the largest absolute
    difference; `before`/`after` are [batch, seq, dim], `real` [batch, seq, 1]. A NaN on one
    side only is a difference of inf (a plain max would hide it)."""
    import torch

    same = (before == after) | (before.isnan() & after.isnan())
    differs = (real & ~same).flatten(1).any(dim=1)
    gap = torch.where(real & ~same, (before - after).abs().nan_to_num(nan=float("inf")), 0.0)
    return differs, float(gap.max()) if gap.numel() else 0.0


def _mlm_logits(out):
    """MLM logits of a model output (`prediction_logits` for a ...ForPreTraining model), or None."""
    logits = getattr(out, "logits", None)
    return logits if logits is not None else getattr(out, "prediction_logits", None)


def _inputs(model, ids, mask) -> dict:
    """The forward pass's inputs: a sequence-to-sequence model's decoder is teacher-forced with the
    text itself, shifted right as the model shifts labels (T5: after decoder_start_token_id;
    mBART: its last token, the language code or </s>, first)."""
    inputs = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=ids.masked_fill(mask == 0, -100))
        inputs["decoder_attention_mask"] = mask
    return inputs


def _last_hidden_states(out) -> list:
    """[batch, seq, dim] tensors: an encoder's last hidden states, or an encoder-decoder's encoder's
    and decoder's (teacher-forced: both of the input's length)."""
    if getattr(out, "encoder_last_hidden_state", None) is not None:
        return [out.encoder_last_hidden_state, out.decoder_hidden_states[-1]]
    return [out.hidden_states[-1]]


def _greedy_differs(original_model, trimmed_model, ids_b, ids_a, mask, old_ids: np.ndarray):
    """bool[batch]: whether greedy generations of GENERATE_TOKENS tokens differ (through `old_ids`);
    the original chooses among the kept tokens only (the others suppressed)."""
    import torch

    dropped = np.setdiff1d(np.arange(original_model.config.vocab_size), old_ids).tolist()
    settings = dict(attention_mask=mask, max_new_tokens=GENERATE_TOKENS, min_new_tokens=GENERATE_TOKENS,
                    do_sample=False, num_beams=1)
    before = original_model.generate(input_ids=ids_b, suppress_tokens=dropped or None, **settings)
    after = trimmed_model.generate(input_ids=ids_a, **settings)
    if before.shape != after.shape:
        return torch.ones(len(ids_b), dtype=torch.bool)
    return (torch.as_tensor(old_ids)[after] != before).any(dim=1)


def compare_texts(original_model, original_tokenizer, trimmed_model, trimmed_tokenizer, old_ids: np.ndarray,
                  texts: list[str], batch_size: int = 8, progress=None, poolers=None) -> LanguageCheck:
    """Compare tokenizations of `texts` and, on covered ones, both models' last hidden states
    [batch, seq, hidden] and MLM logits [batch, seq, V_new], and with `poolers` (the two base
    models with their pooler) the pooler outputs [batch, hidden]; a sequence-to-sequence pair
    teacher-forced (`_inputs`), and its greedy generations. Models must be in eval mode, same dtype
    and attention implementation; `old_ids` is int64[V_new]."""
    import torch

    check = LanguageCheck(texts=len(texts))
    id_map = id_map_for(old_ids, vocab_size(original_tokenizer))
    with untruncated(original_tokenizer) as backend:
        before = backend.encode_batch(texts)
    with untruncated(trimmed_tokenizer) as backend:
        after = backend.encode_batch(texts)
    unk_before, unk_after = original_tokenizer.unk_token_id, trimmed_tokenizer.unk_token_id
    limit = max_positions(original_model.config)
    to_run = []
    for i, (b, a) in enumerate(zip(before, after)):
        ids_b, ids_a = np.asarray(b.ids, dtype=np.int64), np.asarray(a.ids, dtype=np.int64)
        words_b, words_a = ~np.asarray(b.special_tokens_mask, bool), ~np.asarray(a.special_tokens_mask, bool)
        check.tokens_before += int(words_b.sum())
        check.tokens_after += int(words_a.sum())
        check.unk_before += int((ids_b[words_b] == unk_before).sum())
        check.unk_after += int((ids_a[words_a] == unk_after).sum())
        same = (len(ids_a) == len(ids_b) and bool((ids_a < len(old_ids)).all())
                and bool((old_ids[ids_a] == ids_b).all()) and a.tokens == b.tokens)
        check.identical += same
        if (id_map[ids_b] < 0).any():
            continue
        check.covered += 1
        if not same:
            check.differing += 1
        elif len(ids_b) > limit:
            check.too_long += 1
        else:
            to_run.append(i)

    pad_before = original_tokenizer.pad_token_id if original_tokenizer.pad_token_id is not None else 0
    pad_after = int(id_map[pad_before]) if id_map[pad_before] >= 0 else 0
    to_run.sort(key=lambda i: len(before[i].ids))  # similar lengths together: little padding
    with _KeptRowsDecoder(original_model, old_ids) as has_mlm, torch.inference_mode():
        has_mlm = has_mlm and trimmed_model.get_output_embeddings() is not None
        check.max_logit_diff = 0.0 if has_mlm else None
        check.max_pooler_diff = 0.0 if poolers else None
        seq2seq = bool(original_model.config.is_encoder_decoder)
        check.generated = 0 if seq2seq else None
        to_generate = []
        for start in range(0, len(to_run), batch_size):
            batch = to_run[start:start + batch_size]
            ids_b, mask = _padded([before[i].ids for i in batch], pad_before)
            ids_a, _ = _padded([after[i].ids for i in batch], pad_after)
            out_b = original_model(**_inputs(original_model, ids_b, mask))
            out_a = trimmed_model(**_inputs(trimmed_model, ids_a, mask))
            real = mask.bool()[..., None]
            differs = torch.zeros(len(batch), dtype=torch.bool)
            for hidden_b, hidden_a in zip(_last_hidden_states(out_b), _last_hidden_states(out_a)):
                differs_hidden, gap = _tensor_differences(hidden_b, hidden_a, real)
                check.max_hidden_diff = max(check.max_hidden_diff, gap)
                differs |= differs_hidden
            if has_mlm:
                differs_logits, gap = _tensor_differences(_mlm_logits(out_b), _mlm_logits(out_a), real)
                check.max_logit_diff = max(check.max_logit_diff, gap)
                differs |= differs_logits
            if poolers:
                pooled_b = poolers[0](input_ids=ids_b, attention_mask=mask).pooler_output
                pooled_a = poolers[1](input_ids=ids_a, attention_mask=mask).pooler_output
                differs_pooled, gap = _tensor_differences(pooled_b, pooled_a, mask.bool().any(1, keepdim=True))
                check.max_pooler_diff = max(check.max_pooler_diff, gap)
                differs |= differs_pooled
            if seq2seq:  # generated below, with the original's whole decoder back in place
                to_generate.append((ids_b, ids_a, mask, differs))
            else:
                check.differing += int(differs.sum())
            check.compared += len(batch)
            if progress is not None:
                progress(len(batch))
    with torch.inference_mode():
        for ids_b, ids_a, mask, differs in to_generate:
            differs |= _greedy_differs(original_model, trimmed_model, ids_b, ids_a, mask, old_ids)
            check.differing += int(differs.sum())
            check.generated += len(ids_b)
    return check


# ---------------------------------------------------------------------------------------------
# Loading


def read_old_ids(trimmed: str | Path) -> np.ndarray:
    path = Path(trimmed) / "trim_report.json"
    if not path.is_file():
        raise UserError(f"{trimmed} has no trim_report.json: pass a folder written by 'polyglot-distil trim'")
    try:
        return np.asarray(json.loads(path.read_text(encoding="utf-8"))["old_ids"], dtype=np.int64)
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path}: no readable 'old_ids' list ({exc})") from None


def load_pair(original: str, trimmed: str | Path, trust_remote_code: bool = False, original_tokenizer=None):
    """Both models (float32, eager attention, eval mode) and tokenizers, and `old_ids`; checks
    that `trimmed` is a trim of `original` (same token strings through `old_ids`)."""
    import torch
    from transformers import AutoConfig


    old_ids = read_old_ids(trimmed)
    original_tokenizer = original_tokenizer or load_tokenizer(original, trust_remote_code)
    trimmed_tokenizer = load_tokenizer(trimmed)
    vocab_before, vocab_after = vocab_in_id_order(original_tokenizer), vocab_in_id_order(trimmed_tokenizer)
    if len(old_ids) != len(vocab_after) or (len(old_ids) and old_ids.max() >= len(vocab_before)) or any(
            vocab_before[o] != t for o, t in zip(old_ids.tolist(), vocab_after)):
        raise UserError(f"{trimmed} is not a vocabulary trim of {original}: its tokens are not the original's "
                        "tokens at old_ids")
    model_class = model_class_for(load_model(trimmed, AutoConfig))
    settings = dict(attn_implementation="eager", dtype=torch.float32)
    original_model = load_model(original, model_class, trust_remote_code, **settings).eval()
    trimmed_model = load_model(trimmed, model_class, **settings).eval()
    check_tokenizer_fits(original_model, original_tokenizer, original)
    check_tokenizer_fits(trimmed_model, trimmed_tokenizer, trimmed)
    poolers = None
    if has_pooler(checkpoint_files(original)) and has_pooler(checkpoint_files(trimmed)):
        # the bare models with their pretrained pooler, which the model class may lack
        from transformers import AutoModel

        poolers = (load_model(original, AutoModel, trust_remote_code, **settings).eval(),
                   load_model(trimmed, AutoModel, **settings).eval())
    return original_model, original_tokenizer, trimmed_model, trimmed_tokenizer, old_ids, poolers


def verify_equivalence(original: str, trimmed: str | Path, texts: dict[str, list[str]], *, batch_size: int = 8,
                       trust_remote_code: bool = False, show_progress: bool | None = None,
                       original_tokenizer=None) -> dict[str, LanguageCheck]:
    """`compare_texts` for each language's texts ({lang: [text]}) between the model `original`
    (hub name or folder; its tokenizer may be passed already loaded) and the folder `trimmed`
    written by `trim`."""
    pair = load_pair(original, trimmed, trust_remote_code, original_tokenizer)
    results = {}
    for lang, lang_texts in texts.items():
        bar = progress(total=len(lang_texts), desc=f"verify {lang}", unit=" texts", show=show_progress)
        results[lang] = compare_texts(*pair[:5], lang_texts, batch_size, progress=bar.update, poolers=pair[5])
        bar.close()
    return results


def verify_table(results: dict[str, LanguageCheck]) -> str:
    header = ("lang", "texts", "covered", "identical", "unk before", "unk after", "too long", "compared",
              "max|dh|", "max|dlogits|", "max|dpooler|", "generated", "result")
    rows = [header]
    for lang, r in results.items():
        d = r.as_dict()
        rows.append((lang, f"{r.texts:,}", f"{100 * d['covered_share']:.1f}%", f"{100 * d['identical_share']:.1f}%",
                     f"{100 * d['unk_rate_before']:.3f}%", f"{100 * d['unk_rate_after']:.3f}%", f"{r.too_long:,}",
                     f"{r.compared:,}", f"{r.max_hidden_diff:g}",
                     "-" if r.max_logit_diff is None else f"{r.max_logit_diff:g}",
                     "-" if r.max_pooler_diff is None else f"{r.max_pooler_diff:g}",
                     "-" if r.generated is None else f"{r.generated:,}",
                     "equal" if r.passed else f"{r.differing} DIFFER"))
    return text_table(rows)


# ---------------------------------------------------------------------------------------------
# Command line


@dataclass(kw_only=True)
class VerifySettings:
    """`verify`'s settings (the command line's options, a `run` config's `verify:` section)."""

    original: str = setting(role=READS, help="hub name or folder of the model that was trimmed")
    trimmed: str = setting(role=READS, help="folder written by 'polyglot-distil trim'")
    lang: list[str] = setting(kind=APPEND, role=READS, metavar="LANG=SOURCE",
                              help="held-out text of a language; repeat for more sources or languages")
    max_lines: int = setting(1000, help="lines per language (seeded random sample)")
    min_coverage: float = setting(0.5, help="fail a language whose share of covered texts (those the kept vocabulary "
                                            "tokenizes as the source did) is below this: 'identical' must not mean "
                                            "'compared nothing'")
    seed: int = like(SEED)
    batch_size: int = setting(8, advanced=True)
    report: str | None = setting(None, role=WRITES, help="also write the figures to this JSON file")
    overwrite: bool = like(OVERWRITE, help="replace an existing --report file")
    trust_remote_code: bool = like(TRUST_REMOTE_CODE, help="allow the original model's own code to run")
    no_progress: bool = like(NO_PROGRESS)

    def __post_init__(self):
        if self.max_lines < 1 or self.batch_size < 1:
            raise UserError("--max-lines and --batch-size must be at least 1")
        if not 0 <= self.min_coverage <= 1:
            raise UserError(f"--min-coverage must be between 0 and 1, not {self.min_coverage}")


def run_verify(settings: VerifySettings) -> dict:
    """The `verify` stage: compare, write --report; returns the figures, the table in "lines",
    "exit_status" 1 and the verdict in "failure" when they differ or too little text is covered."""
    if settings.report:
        check_writable(settings.report, settings.overwrite, kind="file")
    caps = Caps(max_lines=settings.max_lines, seed=settings.seed)
    texts = {lang: list(iter_language(sources, caps)) for lang, sources in group_lang_specs(settings.lang).items()}
    results = verify_equivalence(settings.original, settings.trimmed, texts, batch_size=settings.batch_size,
                                 trust_remote_code=settings.trust_remote_code,
                                 show_progress=False if settings.no_progress else None)
    if settings.report:
        with atomic_file(settings.report, settings.overwrite) as tmp:
            tmp.write_text(json.dumps({lang: r.as_dict() for lang, r in results.items()}, indent=1), encoding="utf-8")
    report = {"languages": {lang: r.as_dict() for lang, r in results.items()}, "exit_status": 0,
              "lines": verify_table(results).splitlines()}
    failed = [lang for lang, r in results.items() if not r.passed]
    if failed:
        report["exit_status"] = 1
        report["failure"] = f"verify: the trimmed model differs on covered text of {', '.join(failed)}"
        return report
    thin = {lang: r for lang, r in results.items() if r.texts == 0 or r.covered / r.texts < settings.min_coverage}
    if thin:  # "identical" must never mean "compared nothing"
        shown = "; ".join(f"{lang}: {r.covered:,} of {r.texts:,} texts ({100 * r.covered / max(r.texts, 1):.1f}%)"
                          for lang, r in thin.items())
        report["exit_status"] = 1
        report["failure"] = (f"verify: too little text is covered by the kept vocabulary to vouch for it ({shown}; "
                             f"--min-coverage {settings.min_coverage:g}): trim that language with more text, or "
                             "verify on text it covers")
        return report
    report["lines"].append("verify: identical on every covered text")
    return report
