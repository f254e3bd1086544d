"""Trim a multilingual encoder to the vocabulary its languages use ("Load What You Need").

    polyglot-distil trim --model bert-base-multilingual-cased --counts counts.parquet --langs en,fr \
        --out models/mbert-en-fr                                  # Geotrend's rule: >= 0.005% of lines
    polyglot-distil trim --model xlm-roberta-base --counts counts.parquet --langs en,sw \
        --min-prob 1e-6 --keep-chars --out models/xlmr-en-sw       # BiStil's rule, no word lost to <unk>
    polyglot-distil trim ... --coverage 0.999 --min-count 2 --keep-file keep.txt --no-verify

The output folder loads with `AutoModel*` / `AutoTokenizer` and no code of ours:
`model.safetensors` (the source's head and dtype; every tensor indexed by token id selected along
its token axis: embedding rows, the output head, BART's `final_logits_bias`, ..., see
trim_model.py), `tokenizer.json` with every id remapped (vocabulary, merges, added tokens,
post-processor, padding), `tokenizer_config.json` with the source's settings (casing), legacy
files (`vocab.txt` for WordPiece, `vocab.json` + `merges.txt` for BPE, and a trimmed
SentencePiece file when the source has one: `sentencepiece.bpe.model`, `tokenizer.model`,
`spiece.model`),
`trim_report.json` (`old_ids[new_id] = old_id`, parameters before/after, tokens kept per
language and rule, the quick verify) and a model card `README.md`.

Kept ids stay in their original order, so XLM-R's `<s>=0 <pad>=1 </s>=2 <unk>=3` keep the ids
its position ids depend on. Supported tokenizers: WordPiece (BERT family), SentencePiece
Unigram (XLM-R, mT5) and BPE (byte-level as RoBERTa and Qwen, or SentencePiece-style with byte
fallback as Gemma; the kept vocabulary is closed under merges, see trim_tokenizer.py); encoders,
decoders and encoder-decoders (mT5, mBART). By default a quick `verify` runs on the first lines of
the counted corpus before the folder is put in place: a trim that changes anything on covered text
is not written.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path


from polyglot_distil.data.corpus import Caps, group_lang_specs, iter_language, parse_sources
from polyglot_distil.errors import UserError
from polyglot_distil.models.checkpoint import NO_POOLER_MODEL_ARGS, carried_tensors, carry_tensors, \
    copy_sentence_transformers, drop_tensors, load_without_pooler
from polyglot_distil.fingerprints import tokenizer_fingerprint
from polyglot_distil.models.loading import folder_size_bytes, load_model, load_tokenizer, model_class_for, \
    vocab_in_id_order
from polyglot_distil.options import APPEND, FLAG, NO_PROGRESS, OVERWRITE, READS, TRUST_REMOTE_CODE, WRITES, \
    csv, like, setting
from polyglot_distil.outputs import atomic_dir, check_writable
from polyglot_distil.params import count_parameters
from polyglot_distil.tables import markdown_table
from polyglot_distil.vocab.count import Counts, read_counts
from polyglot_distil.vocab.select import BISTIL_MIN_PROB, GEOTREND_LINE_SHARE, Rules, select_vocabulary, \
    selection_table
from polyglot_distil.vocab.sentencepiece import find_sentencepiece, sentencepiece_byte_ids, \
    trim_sentencepiece
from polyglot_distil.vocab.trim_model import SPECIAL_ID_KEYS, trim_model_vocab
from polyglot_distil.vocab.trim_tokenizer import byte_alphabet_ids, byte_fallback_ids, close_under_merges, \
    tokenizer_model_type, trim_tokenizer, vocab_size, write_vocab_and_merges, write_vocab_txt
from polyglot_distil.vocab.verify import EquivalenceError, verify_equivalence, verify_table


def special_token_ids(tokenizer, config) -> list[int]:
    """Ids that are always kept: the tokenizer's special and added tokens, and every special id
    the model's config names."""
    size = vocab_size(tokenizer)
    ids = set(tokenizer.all_special_ids) | set(tokenizer.backend_tokenizer.get_added_tokens_decoder())
    ids |= {getattr(config, key) for key in SPECIAL_ID_KEYS if isinstance(getattr(config, key, None), int)}
    return sorted(i for i in ids if 0 <= i < size)


def check_counts(counts: Counts, tokenizer, counts_path, model_name: str) -> None:
    """Counts made with another tokenizer would select the wrong rows."""
    size = vocab_size(tokenizer)
    if counts.vocab_size != size or counts.fingerprint != tokenizer_fingerprint(tokenizer, vocab_in_id_order(tokenizer)):
        raise UserError(f"{counts_path or 'the counts'}: counted with the tokenizer {counts.tokenizer} "
                        f"({counts.vocab_size:,} tokens), not with that of {model_name} ({size:,} tokens); "
                        f"count again with --model {model_name}")



# ---------------------------------------------------------------------------------------------
# The trim


def report_json(report: dict) -> str:
    """The report indented for reading, with the long `old_ids` list on one line at the end."""
    head = json.dumps({k: v for k, v in report.items() if k != "old_ids"}, indent=1, ensure_ascii=False)
    return head[:-2] + f',\n "old_ids": {json.dumps(report["old_ids"])}\n}}\n'


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def trim(model_name: str, counts: Counts | str | Path, langs: list[str], rules: Rules, out: str | Path, *,
         counts_path: str | Path | None = None, overwrite: bool = False,
         verify_texts: dict[str, list[str]] | None = None, trust_remote_code: bool = False,
         show_progress: bool | None = None, log=None) -> dict:
    """Trim `model_name` to the tokens `rules` select from the counts of `langs` and write the
    folder `out`. With `verify_texts` ({lang: texts}) the saved folder is checked against the
    source before it is put in place, and `log`, when given, takes that check's table (text). Returns
    the trim report (also in `out/trim_report.json`)."""
    from transformers import AutoConfig

    out = check_writable(out, overwrite)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    tokenizer = load_tokenizer(model_name, trust_remote_code)
    kind = tokenizer_model_type(tokenizer, model_name)
    if not isinstance(counts, Counts):
        counts_path, counts = counts, read_counts(counts)
    check_counts(counts, tokenizer, counts_path, model_name)
    config = load_model(model_name, AutoConfig, trust_remote_code)  # the config picks the model class
    model_class = model_class_for(config)
    model, loading = load_model(model_name, model_class, trust_remote_code, dtype="auto", output_loading_info=True)
    unexpected = sorted(loading.get("unexpected_keys") or [])  # in the checkpoint, not in the class: carried over
    new_in_class = sorted(loading.get("missing_keys") or [])  # in the class, not in the checkpoint: not saved
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    vocab = vocab_in_id_order(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(vocab):
        raise UserError(f"{model_name}: the tokenizer has {len(vocab):,} tokens but the embedding only {rows:,} rows")
    spm_path = find_sentencepiece(model_name) if kind in ("Unigram", "BPE") else None
    spm_data = spm_path.read_bytes() if spm_path else None
    # a byte-fallback model's <0xNN> pieces (of tokenizer.json, or of the legacy file) are always kept
    byte_ids = set(byte_fallback_ids(tokenizer)) | set(sentencepiece_byte_ids(spm_data, vocab) if spm_data else ())
    selection = select_vocabulary(counts, langs, rules, vocab, special_token_ids(tokenizer, model.config),
                                  sorted(byte_ids), byte_alphabet_ids(tokenizer))
    for token in selection.missing_keep:
        print(f"warning: keep-list token {token!r} is not in the vocabulary of {model_name}; ignored", file=sys.stderr)
    # BPE: the parts of every merge that makes a kept token, which text never shows as tokens
    kept_ids, ancestors = close_under_merges(tokenizer, selection.kept_ids)
    if kind == "BPE":
        selection.report["always_kept"]["merge_ancestors"] = {"tokens": ancestors, "added": ancestors}
        selection.report["kept"] = len(kept_ids)
        selection = replace(selection, kept_ids=kept_ids)
    seconds["select"] = time.perf_counter() - start

    start = time.perf_counter()
    # what the source holds: not the tensors the class made up (a pooler E5 never had), which are not saved
    state = model.state_dict()
    made_up = [state[name] for name in new_in_class if name in state]
    made_up_params, made_up_bytes = sum(p.numel() for p in made_up), sum(p.numel() * p.element_size() for p in made_up)
    before = count_parameters(model)
    params_before, bytes_before = before["total"] - made_up_params, before["bytes"] - made_up_bytes
    old_specials = {key: getattr(model.config, key, None) for key in SPECIAL_ID_KEYS}
    carried = carried_tensors(model_name, unexpected, kept_ids, rows)  # before anything changes or is written
    vocab_params = trim_model_vocab(model, kept_ids)
    trimmed_tokenizer = trim_tokenizer(tokenizer, kept_ids)
    spm_bytes = trim_sentencepiece(spm_data, kept_ids, vocab) if spm_data else None
    if spm_path and spm_bytes is None:
        print(f"warning: {spm_path} does not match the tokenizer of {model_name}; no {spm_path.name} written",
              file=sys.stderr)
    seconds["rebuild"] = time.perf_counter() - start

    after = count_parameters(model)
    after = {"total": after["total"] - made_up_params, "bytes": after["bytes"] - made_up_bytes}
    report = {
        "source": str(model_name), "architecture": type(model).__name__, "tokenizer_model": kind,
        "has_mlm_head": model.get_output_embeddings() is not None,
        "dtype": str(model.dtype).replace("torch.", ""), "counts": str(counts_path) if counts_path else None,
        "languages": list(langs),
        "vocab_size_before": len(vocab), "vocab_size_after": len(kept_ids), "embedding_rows_before": rows,
        "params_before": params_before, "params_after": after["total"],
        "vocab_params_before": vocab_params["before"], "vocab_params_after": vocab_params["after"],
        "weights_bytes_before": bytes_before, "weights_bytes_after": after["bytes"],
        "special_tokens": {token: [old, int(selection.id_map[old])]  # [old id, new id]
                           for token, old in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)},
        "config_special_ids": {key.removesuffix("_token_id"): [old, getattr(model.config, key, None)]
                               for key, old in old_specials.items() if isinstance(old, int)},
        "selection": selection.report,
    }
    if kind == "BPE":  # merges whose parts or result are gone are removed, the others keep their order
        report["bpe_merges"] = {"before": len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]),
                                "after": len(json.loads(trimmed_tokenizer.backend_tokenizer.to_str())["model"]["merges"])}
    report["embedding_share_before"] = _share(report["vocab_params_before"], params_before)
    report["embedding_share_after"] = _share(report["vocab_params_after"], report["params_after"])
    report["reduction"] = _share(params_before - report["params_after"], params_before)

    if getattr(model.config, "auto_map", None) and not trust_remote_code:
        del model.config.auto_map  # it points at code the folder does not hold
    with atomic_dir(out, overwrite) as tmp:
        start = time.perf_counter()
        model.save_pretrained(tmp)
        report["carried_tensors"] = carry_tensors(carried, tmp)
        report["dropped_new_tensors"] = drop_tensors(tmp, new_in_class)  # e.g. a pooler E5 never had
        trimmed_tokenizer.save_pretrained(tmp)
        report["sentence_transformers"] = copy_sentence_transformers(model_name, tmp)
        if load_without_pooler(tmp):  # E5: sentence-transformers builds no pooler, so reports none missing
            report["sentence_transformers_model_args"] = NO_POOLER_MODEL_ARGS
        legacy = []
        if kind == "WordPiece":
            write_vocab_txt(trimmed_tokenizer, tmp / "vocab.txt")
            legacy.append("vocab.txt")
        if kind == "BPE":
            legacy += write_vocab_and_merges(trimmed_tokenizer, tmp)
        if spm_bytes is not None:
            (tmp / spm_path.name).write_bytes(spm_bytes)
            legacy.append(spm_path.name)
        report["legacy_files"] = legacy
        report["folder_bytes_after"] = folder_size_bytes(tmp)
        seconds["save"] = time.perf_counter() - start
        del model
        report["verify"] = None
        if verify_texts:
            start = time.perf_counter()
            (tmp / "trim_report.json").write_text(json.dumps({"old_ids": kept_ids.tolist()}), encoding="utf-8")
            results = verify_equivalence(model_name, tmp, verify_texts, trust_remote_code=trust_remote_code,
                                         show_progress=show_progress, original_tokenizer=tokenizer)
            if log is not None:
                log(verify_table(results))
            report["verify"] = {lang: r.as_dict() for lang, r in results.items()}
            seconds["verify"] = time.perf_counter() - start
            failed = [lang for lang, r in results.items() if not r.passed]
            if failed:
                raise EquivalenceError(f"the trimmed model differs from {model_name} on covered text of "
                                       f"{', '.join(failed)}; {out} was not written (a bug: please report it)")
        report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        report["old_ids"] = kept_ids.tolist()
        (tmp / "trim_report.json").write_text(report_json(report), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(report), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------
# Model card


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def _exactness(report: dict) -> str:
    """What the card may claim: only the outputs the model has, and only as verified."""
    verified = report.get("verify") or {}
    seq2seq = any(v.get("generated") is not None for v in verified.values())
    outputs = ["tokenization", "the encoder's and decoder's hidden states (teacher forcing)" if seq2seq
               else "hidden states"]
    if any(v.get("max_logit_diff") is not None for v in verified.values()) or (not verified and report["has_mlm_head"]):
        outputs.append("the logits over the kept tokens")
    if any(v.get("max_pooler_diff") is not None for v in verified.values()):
        outputs.append("the pooler output")
    if seq2seq:
        outputs.append("greedy generation (the source choosing among the kept tokens)")
    said = ", ".join(outputs[:-1]) + " and " + outputs[-1]
    every = "Every tensor of the source is kept (vocabulary-sized ones re-indexed)."
    if verified:
        return (f"On text the kept vocabulary covers, {said} are exactly those of the source "
                f"(verified on a sample, below). {every}")
    return f"On text the kept vocabulary covers, {said} are meant to equal the source's; not verified here. {every}"


def model_card(report: dict) -> str:
    """README.md: what was trimmed, with the figures of trim_report.json as tables."""
    pb, pa = report["params_before"], report["params_after"]
    langs = ", ".join(report["languages"])
    lines = [
        "---", "tags: [polyglot-distil, vocabulary-trimming]", f"base_model: {report['source']}",
        f"language: [{langs}]", "---",
        f"# {report['source']}, vocabulary trimmed to {langs}", "",
        f"The vocabulary of `{report['source']}` reduced to the tokens that {langs} use "
        "(Abdaoui et al. 2020, \"Load What You Need\"), by `polyglot-distil trim`. " + _exactness(report),
        "", "| | source | trimmed | change |", "| --- | ---: | ---: | ---: |",
        f"| parameters | {pb:,} | {pa:,} | {-100 * report['reduction']:+.1f}% |",
        f"| vocabulary (tokenizer) | {report['vocab_size_before']:,} | {report['vocab_size_after']:,} | "
        f"{100 * (report['vocab_size_after'] / report['vocab_size_before'] - 1):+.1f}% |",
        f"| embedding rows | {report.get('embedding_rows_before', report['vocab_size_before']):,} | "
        f"{report['vocab_size_after']:,} | |",
        f"| embedding share of parameters | {100 * report['embedding_share_before']:.1f}% | "
        f"{100 * report['embedding_share_after']:.1f}% | |",
        f"| weights ({report['dtype']}) | {_mb(report['weights_bytes_before'])} | "
        f"{_mb(report['weights_bytes_after'])} | |",
        f"| folder on disk | | {_mb(report.get('folder_bytes_after'))} | |",
        "", "## Kept tokens", "",
        f"Rules (a token must pass all of them in a language; languages are united): `{report['selection']['rules']}`.",
        "", "| language | selected | only this language |", "| --- | ---: | ---: |",
    ]
    for lang, r in report["selection"]["languages"].items():
        lines.append(f"| {lang} | {r['selected']:,} | {r['only_this_language']:,} |")
    for kept_group, g in report["selection"]["always_kept"].items():
        lines.append(f"| always kept: {kept_group.replace('_', ' ')} | +{g['added']:,} | |")
    if report.get("verify"):
        checks = report["verify"].values()
        columns = [("max abs diff MLM logits", "max_logit_diff"), ("max abs diff pooler", "max_pooler_diff")]
        columns = [(title, key) for title, key in columns if any(v.get(key) is not None for v in checks)]
        header = ["language", "texts", "covered", "identical tokenization", "max abs diff hidden",
                  *(title for title, _ in columns)]
        rows = [[lang, f"{v['texts']:,}", f"{100 * v['covered_share']:.1f}%", f"{100 * v['identical_share']:.1f}%",
                 f"{v['max_hidden_diff']:g}", *(f"{v[key]:g}" for _, key in columns)]
                for lang, v in report["verify"].items()]
        lines += ["", "## Quick verification (sample of the counted corpus)", "", *markdown_table(header, rows)]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModel, AutoTokenizer",
              'tokenizer = AutoTokenizer.from_pretrained("PATH")', 'model = AutoModel.from_pretrained("PATH")', "```"]
    if report.get("sentence_transformers"):
        lines += ["", "A sentence-transformers model, as its source (modules, pooling and prompts kept):", "",
                  "```python", "from sentence_transformers import SentenceTransformer",
                  'embeddings = SentenceTransformer("PATH").encode(["..."])', "```"]
    lines += ["", "`trim_report.json` maps each new id to the source's id (`old_ids`).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def keep_tokens(keep: list[str], keep_file: str | None) -> list[str]:
    """The tokens to keep whatever the rules say: `keep`, then the lines of `keep_file`."""
    tokens = list(keep)
    if keep_file:
        path = Path(keep_file)
        if not path.is_file():
            raise UserError(f"--keep-file: {path} not found")
        tokens += [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tokens


def verification_texts(specs: list[str], counts: Counts, langs: list[str], max_lines: int) -> dict[str, list[str]]:
    """The first `max_lines` lines of each language: from `--verify-text` specs, else from the
    sources the counts were made from."""
    if max_lines < 1:
        raise UserError("--verify-lines must be at least 1")
    caps = Caps(max_lines=max_lines, sample="head")
    if specs:
        return {lang: list(iter_language(sources, caps)) for lang, sources in group_lang_specs(specs).items()}
    texts = {}
    for lang in langs:
        recorded = counts.totals[lang].sources if lang in counts.totals else []
        try:
            if not recorded:
                raise UserError("the counts name no source")
            texts[lang] = list(iter_language(parse_sources(recorded), caps))
        except UserError as exc:
            raise UserError(f"cannot read the counted corpus of {lang} for the quick verification ({exc}); "
                            "pass --verify-text LANG=SOURCE or --no-verify") from None
    return texts


RULES = ("selection rules (per language all must hold; languages are united; "
         f"default: --min-line-share {GEOTREND_LINE_SHARE})")
QUICK_VERIFY = "quick verification (default: the first lines of the counted corpus)"


@dataclass(kw_only=True)
class TrimSettings:
    """`trim`'s settings (the command line's options, a `run` config's `trim:` section)."""

    model: str = setting(role=READS, help="hub name or model folder (WordPiece or Unigram tokenizer)")
    counts: str = setting(role=READS, help="counts file written by 'polyglot-distil count'")
    langs: str = setting(help="comma-separated languages of the counts to keep, e.g. en,fr")
    out: str = setting(role=WRITES, help="the folder to write")
    min_count: int | None = setting(None, group=RULES, help="minimum occurrences in the language")
    min_line_share: float | None = setting(
        None, group=RULES, help=f"minimum share of the language's lines holding it (Geotrend: {GEOTREND_LINE_SHARE})")
    min_prob: float | None = setting(None, group=RULES, help=f"minimum unigram probability (BiStil: {BISTIL_MIN_PROB})")
    coverage: float | None = setting(None, group=RULES, help="keep the fewest tokens covering this share of occurrences")
    top_n: int | None = setting(None, group=RULES, help="keep the N most frequent tokens of each language")
    keep: list[str] = setting([], kind=APPEND, metavar="TOKEN", group=RULES, help="always keep TOKEN (repeatable)")
    keep_file: str | None = setting(None, role=READS, group=RULES,
                                    help="always keep the tokens of this file (one per line)")
    keep_chars: bool = setting(False, kind=FLAG, group=RULES,
                               help="always keep single-character tokens (and ##x / ▁x), so no word becomes unknown")
    verify_text: list[str] = setting([], kind=APPEND, role=READS, metavar="LANG=SOURCE", group=QUICK_VERIFY,
                                     renamed_from=("--verify-lang",),
                                     help="verify on this text instead of the counted sources")
    verify_lines: int = setting(100, group=QUICK_VERIFY, help="lines per language to verify on")
    no_verify: bool = setting(False, kind=FLAG, group=QUICK_VERIFY, help="skip the quick verification")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")
    trust_remote_code: bool = like(TRUST_REMOTE_CODE)
    no_progress: bool = like(NO_PROGRESS)


def run_trim(settings: TrimSettings) -> dict:
    """The `trim` stage: select, trim, quick-verify; returns the trim report, its summary (the
    quick verification's table first) in "lines"."""
    check_writable(settings.out, settings.overwrite)
    langs = csv(settings.langs)
    if not langs:
        raise UserError("--langs: name at least one language, e.g. --langs en,fr")
    rules = Rules(min_count=settings.min_count, min_line_share=settings.min_line_share, min_prob=settings.min_prob,
                  coverage=settings.coverage, top_n=settings.top_n, keep_tokens=keep_tokens(settings.keep, settings.keep_file), keep_chars=settings.keep_chars)
    rules.validate()
    counts = read_counts(settings.counts)
    missing = [lang for lang in langs if lang not in counts.occurrences]
    if missing:
        raise UserError(f"language {missing[0]!r} is not in {settings.counts} (it has: {', '.join(counts.languages)})")
    texts = None if settings.no_verify else verification_texts(settings.verify_text, counts, langs, settings.verify_lines)
    lines: list[str] = []
    try:
        report = trim(settings.model, counts, langs, rules, settings.out, counts_path=settings.counts,
                      overwrite=settings.overwrite, verify_texts=texts, trust_remote_code=settings.trust_remote_code,
                      show_progress=False if settings.no_progress else None,
                      log=lambda text: lines.extend(text.splitlines()))
    except UserError as error:  # a failed quick verification: its table says where
        error.lines = lines + error.lines
        raise
    lines += [*selection_table(report["selection"]).splitlines(),
              f"parameters {report['params_before']:,} -> {report['params_after']:,} "
              f"(-{100 * report['reduction']:.1f}%), vocabulary {report['vocab_size_before']:,} -> "
              f"{report['vocab_size_after']:,}",
              "seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()),
              f"wrote {settings.out}"]
    return {**report, "lines": lines}
