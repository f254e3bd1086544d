"""Choose the tokens to keep from a counts table: the rules of "Load What You Need" and BiStil.

    rules = Rules(min_line_share=GEOTREND_LINE_SHARE)             # Geotrend: in >= 0.005% of lines
    rules = Rules(min_prob=BISTIL_MIN_PROB)                       # BiStil: p(token) >= 1e-6
    rules = Rules(coverage=0.999, min_count=2, keep_chars=True)   # rules combine
    selection = select_vocabulary(counts, ["en", "fr"], rules, vocab, special_ids)
    selection.kept_ids      # int64[V_new]: original ids, ascending (new id -> old id)

How rules combine: within one language a token must pass *every* rule given (each one narrows
the choice, as vocabtrimmer's "count >= 2, then top-N"); the union over the chosen languages is
kept (BiStil's max(p_src, p_tgt) >= 1e-6 is the union of two per-language rules). Then, whatever
the rules say, the special tokens, the byte pieces `<0x00>`..`<0xFF>` of a byte-fallback model,
the user's keep-list and (with `keep_chars`) every single-character token are added. Kept tokens
keep their original relative order, so the specials at the start of XLM-R's vocabulary
(`<s> <pad> </s> <unk>`) keep their ids.

Everything here is vectorised numpy over arrays of the vocabulary's size: O(V).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polyglot_distil.vocab.count import Counts
from polyglot_distil.errors import UserError
from polyglot_distil.tables import text_table

GEOTREND_LINE_SHARE = 5e-5  # 0.005% of a language's lines (Abdaoui et al. 2020)
BISTIL_MIN_PROB = 1e-6  # unigram probability in either language (Ansell et al. 2023)
RULE_NAMES = ("min_count", "min_line_share", "min_prob", "coverage", "top_n")
_WORD_MARKERS = ("##", "\u2581")  # WordPiece continuation, SentencePiece word start


@dataclass
class Rules:
    """Selection rules; `None` means the rule is not used. With no rule at all, Geotrend's
    `min_line_share = 0.00005` applies."""

    min_count: int | None = None  # occurrences in the language's corpus
    min_line_share: float | None = None  # lines holding the token / lines, in (0, 1]
    min_prob: float | None = None  # occurrences / tokens of the language, in (0, 1]
    coverage: float | None = None  # fewest most-frequent tokens covering this share of occurrences
    top_n: int | None = None  # the N most frequent tokens of the language
    keep_tokens: list[str] = field(default_factory=list)  # always kept (token strings)
    keep_chars: bool = False  # always keep single-character tokens and their ## / ▁ forms

    def active(self) -> dict[str, float]:
        """The frequency rules in force, by name (Geotrend's rule when none was given)."""
        given = {name: getattr(self, name) for name in RULE_NAMES if getattr(self, name) is not None}
        return given or {"min_line_share": GEOTREND_LINE_SHARE}

    def validate(self) -> None:
        for name, value in self.active().items():
            if name in ("min_count", "top_n") and (value != int(value) or value < 1):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= 1, not {value}")
            if name in ("min_line_share", "min_prob", "coverage") and not 0 < value <= 1:
                raise UserError(f"--{name.replace('_', '-')} must be a fraction in (0, 1], not {value} "
                                "(Geotrend's 0.005% of lines is 0.00005)")


@dataclass
class Selection:
    """The kept vocabulary. `kept_ids[new_id] = old_id` (ascending); `report` says which rule,
    language and always-kept group contributed how many tokens."""

    kept_ids: np.ndarray  # int64[V_new]
    old_vocab_size: int
    report: dict
    missing_keep: list[str]

    @property
    def id_map(self) -> np.ndarray:
        """int64[V_old]: the new id of each old id, -1 where the token was dropped."""
        return id_map_for(self.kept_ids, self.old_vocab_size)


def id_map_for(kept_ids: np.ndarray, old_vocab_size: int) -> np.ndarray:
    """int64[V_old]: the new id of each old id, -1 where dropped."""
    id_map = np.full(old_vocab_size, -1, dtype=np.int64)
    id_map[kept_ids] = np.arange(len(kept_ids), dtype=np.int64)
    return id_map


def _most_frequent(occurrences: np.ndarray) -> np.ndarray:
    """Ids of seen tokens, most frequent first; ties in id order (a stable sort)."""
    order = np.argsort(-occurrences, kind="stable")
    return order[: int(np.count_nonzero(occurrences))]


def rule_mask(name: str, value: float, occurrences: np.ndarray, line_counts: np.ndarray,
              lines: int) -> np.ndarray:
    """bool[V]: the tokens of one language that pass one rule. `occurrences` and `line_counts`
    are int64[V] counts of that language, `lines` its number of lines."""
    tokens = int(occurrences.sum())
    mask = np.zeros(len(occurrences), dtype=bool)
    if tokens == 0:
        return mask
    if name == "min_count":
        return occurrences >= value
    if name == "min_line_share":
        return (line_counts > 0) & (line_counts >= value * lines)
    if name == "min_prob":
        return (occurrences > 0) & (occurrences >= value * tokens)
    ranked = _most_frequent(occurrences)
    if name == "top_n":
        mask[ranked[: int(value)]] = True
    elif name == "coverage":
        covered = np.cumsum(occurrences[ranked])
        # the fewest tokens whose occurrences reach the target share (float slack for share = 1)
        needed = int(np.searchsorted(covered, value * tokens * (1 - 1e-12), side="left")) + 1
        mask[ranked[:needed]] = True
    else:
        raise ValueError(f"unknown rule {name!r}")
    return mask


def char_token_mask(vocab: list[str]) -> np.ndarray:
    """bool[V]: tokens that are one character, alone or after `##` / `▁` (so that no word made
    of covered characters collapses to the unknown token)."""
    def is_char(token: str) -> bool:
        for marker in _WORD_MARKERS:
            if token.startswith(marker) and len(token) > len(marker):
                token = token[len(marker):]
                break
        return len(token) == 1

    return np.fromiter((is_char(t) for t in vocab), dtype=bool, count=len(vocab))


def select_vocabulary(counts: Counts, langs: list[str], rules: Rules, vocab: list[str],
                      special_ids: np.ndarray | list[int], byte_ids: np.ndarray | list[int] = (),
                      alphabet_ids: np.ndarray | list[int] = ()) -> Selection:
    """Apply `rules` to the counts of `langs`. `vocab` is the tokenizer's vocabulary in id order
    (a counts file only names the tokens it saw); `special_ids`, `byte_ids` (a byte-fallback
    model's `<0xNN>` pieces: any character without a piece is spelled with them) and
    `alphabet_ids` (a byte-level BPE's 256 byte characters, which spell every text) are always kept."""
    rules.validate()
    missing = [lang for lang in langs if lang not in counts.occurrences]
    if missing:
        raise UserError(f"language {missing[0]!r} is not in the counts (it has: {', '.join(counts.languages)}); "
                        f"count it first: polyglot-distil count --lang {missing[0]}=FILE ...")
    empty = [lang for lang in langs if not counts.occurrences[lang].any()]
    if empty:  # its text gave no token: trimming to it would silently drop the language
        raise UserError(f"language {empty[0]!r} has no token in the counts (its text gave none); count real text of "
                        f"it, or leave it out of --langs")
    size = counts.vocab_size
    if len(vocab) < size:
        raise UserError(f"the counts cover {size:,} token ids but the tokenizer has only {len(vocab):,}")

    by_lang: dict[str, np.ndarray] = {}
    lang_report: dict[str, dict] = {}
    for lang in langs:
        occ, lines = counts.occurrences[lang], counts.line_counts[lang]
        passing = {name: rule_mask(name, value, occ, lines, counts.totals[lang].lines)
                   for name, value in rules.active().items()}
        by_lang[lang] = np.logical_and.reduce(list(passing.values()))
        lang_report[lang] = {"by_rule": {n: int(m.sum()) for n, m in passing.items()},
                             "selected": int(by_lang[lang].sum())}
    union = np.logical_or.reduce(list(by_lang.values()))
    for lang, mask in by_lang.items():
        others = [m for other, m in by_lang.items() if other != lang]
        only = mask & ~np.logical_or.reduce(others) if others else mask
        lang_report[lang]["only_this_language"] = int(only.sum())

    special = np.zeros(len(vocab), dtype=bool)
    special[np.asarray(special_ids, dtype=np.int64)] = True
    if not (union[:size] & ~special[:size]).any():
        raise UserError(f"the rules {rules.active()} keep no token of {', '.join(langs)} beyond the special "
                        "tokens; loosen them (or check that the counts hold text)")

    index = {token: i for i, token in enumerate(vocab)}
    keep_list = np.zeros(len(vocab), dtype=bool)
    missing_keep = [t for t in rules.keep_tokens if t not in index]
    keep_list[[index[t] for t in rules.keep_tokens if t in index]] = True
    chars = char_token_mask(vocab) if rules.keep_chars else np.zeros(len(vocab), dtype=bool)
    groups = [("special", special), ("keep_list", keep_list), ("keep_chars", chars)]
    for group, ids in (("byte_alphabet", alphabet_ids), ("byte_fallback", byte_ids)):
        if len(ids):
            mask = np.zeros(len(vocab), dtype=bool)
            mask[np.asarray(ids, dtype=np.int64)] = True
            groups.insert(1, (group, mask))

    kept = np.zeros(len(vocab), dtype=bool)
    kept[:size] = union
    added = {}
    for group, mask in groups:
        added[group] = {"tokens": int(mask.sum()), "added": int((mask & ~kept).sum())}
        kept |= mask
    kept_ids = np.flatnonzero(kept).astype(np.int64)
    report = {
        "rules": rules.active(),
        "languages": lang_report,
        "union_of_languages": int(union.sum()),
        "always_kept": added,
        "missing_keep_tokens": missing_keep,
        "vocab_size_before": len(vocab),
        "kept": len(kept_ids),
    }
    return Selection(kept_ids=kept_ids, old_vocab_size=len(vocab), report=report, missing_keep=missing_keep)


def selection_table(report: dict) -> str:
    """The selection report as a short text table (one row per language, then the additions)."""
    rows = [("language", *report["rules"], "selected", "only this language")]
    for lang, r in report["languages"].items():
        rows.append((lang, *(f"{r['by_rule'][n]:,}" for n in report["rules"]), f"{r['selected']:,}",
                     f"{r['only_this_language']:,}"))
    lines = [text_table(rows)]
    lines.append(f"union of languages: {report['union_of_languages']:,}; " + "; ".join(
        f"{group.replace('_', ' ')}: +{g['added']:,}" for group, g in report["always_kept"].items()))
    lines.append(f"kept {report['kept']:,} of {report['vocab_size_before']:,} tokens")
    return "\n".join(lines)
