"""Vocabulary selection: each rule keeps what its paper says, rules narrow within a language and
unite across languages, specials / keep-list / characters are always kept in original order, the
report says who contributed what; with the real mBERT vocabulary and XNLI en+fr the kept
vocabulary is tens of thousands of tokens and a full-size mBERT loses at least 30% of its
parameters."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import shared
from polyglot_distil.vocab.count import Counts, LanguageTotals
from polyglot_distil.errors import UserError
from polyglot_distil.vocab.select import (BISTIL_MIN_PROB, GEOTREND_LINE_SHARE, Rules, char_token_mask, rule_mask,
                                   select_vocabulary, selection_table)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "la", "cat", "chat", "##s", "a", "##a", "é", "xyz"]
SPECIALS = [0, 1, 2, 3, 4]


def make_counts(occurrences: dict[str, list[int]], line_counts: dict[str, list[int]] | None = None,
                lines: dict[str, int] | None = None) -> Counts:
    counts = Counts(tokenizer="test", fingerprint="f", vocab=list(VOCAB), unk_id=1)
    for lang, occ in occurrences.items():
        occ = np.asarray(occ + [0] * (len(VOCAB) - len(occ)), dtype=np.int64)
        lc = np.asarray((line_counts or {}).get(lang, occ), dtype=np.int64)
        lc = np.concatenate([lc, np.zeros(len(VOCAB) - len(lc), dtype=np.int64)])
        counts.occurrences[lang], counts.line_counts[lang] = occ, lc
        counts.totals[lang] = LanguageTotals(lines=(lines or {}).get(lang, 100), tokens=int(occ.sum()))
    return counts


def kept_tokens(selection) -> list[str]:
    return [VOCAB[i] for i in selection.kept_ids]


#                 PAD UNK CLS SEP MASK the  la cat chat ##s  a ##a  é xyz
EN = [0, 0, 0, 0, 0, 50, 0, 10, 0, 5, 3, 0, 1, 0]
FR = [0, 1, 0, 0, 0, 0, 40, 0, 10, 5, 2, 1, 4, 0]


def test_min_count_keeps_tokens_seen_at_least_n_times():
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=5), VOCAB, SPECIALS)
    assert kept_tokens(selection) == VOCAB[:5] + ["the", "cat", "##s"]


def test_min_line_share_uses_the_share_of_the_languages_lines():
    # 20,000 lines: Geotrend's 0.005% is one line; 40,000 lines: two lines
    line_counts = {"en": [0, 0, 0, 0, 0, 9, 0, 2, 0, 1, 0, 0, 0, 0]}
    few = make_counts({"en": EN}, line_counts, {"en": 20_000})
    many = make_counts({"en": EN}, line_counts, {"en": 40_000})
    rules = Rules(min_line_share=GEOTREND_LINE_SHARE)
    assert kept_tokens(select_vocabulary(few, ["en"], rules, VOCAB, SPECIALS))[5:] == ["the", "cat", "##s"]
    assert kept_tokens(select_vocabulary(many, ["en"], rules, VOCAB, SPECIALS))[5:] == ["the", "cat"]


def test_min_prob_keeps_a_token_frequent_enough_in_either_language():
    # en has 69 tokens, fr 63: "a" is 3/69 = 0.043 in en and 2/63 = 0.032 in fr
    counts = make_counts({"en": EN, "fr": FR})
    selection = select_vocabulary(counts, ["en", "fr"], Rules(min_prob=0.04), VOCAB, SPECIALS)
    assert kept_tokens(selection)[5:] == ["the", "la", "cat", "chat", "##s", "a", "é"]


def test_coverage_keeps_the_fewest_most_frequent_tokens_reaching_the_share():
    # en: the 50, cat 10, ##s 5, a 3, é 1 (69 in all): 90% = 62.1 needs the, cat, ##s (65)
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(coverage=0.9), VOCAB, SPECIALS)
    assert kept_tokens(selection)[5:] == ["the", "cat", "##s"]
    full = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(coverage=1.0), VOCAB, SPECIALS)
    assert kept_tokens(full)[5:] == ["the", "cat", "##s", "a", "é"]


def test_top_n_breaks_ties_by_original_id():
    counts = make_counts({"fr": FR})  # la 40, chat 10, ##s 5, é 4, a 2, [UNK] 1, ##a 1
    selection = select_vocabulary(counts, ["fr"], Rules(top_n=6), VOCAB, SPECIALS)
    assert kept_tokens(selection)[5:] == ["la", "chat", "##s", "a", "é"]  # [UNK] (id 1) beats ##a; special anyway


def test_rules_within_a_language_must_all_hold():
    counts = make_counts({"en": EN})
    selection = select_vocabulary(counts, ["en"], Rules(min_count=3, top_n=2), VOCAB, SPECIALS)
    assert kept_tokens(selection)[5:] == ["the", "cat"]
    assert selection.report["languages"]["en"]["by_rule"] == {"min_count": 4, "top_n": 2}


def test_languages_are_united_and_each_ones_share_reported():
    counts = make_counts({"en": EN, "fr": FR})
    selection = select_vocabulary(counts, ["en", "fr"], Rules(min_count=5), VOCAB, SPECIALS)
    assert kept_tokens(selection)[5:] == ["the", "la", "cat", "chat", "##s"]
    report = selection.report["languages"]
    assert report["en"] == {"by_rule": {"min_count": 3}, "selected": 3, "only_this_language": 2}
    assert report["fr"] == {"by_rule": {"min_count": 3}, "selected": 3, "only_this_language": 2}
    assert selection.report["union_of_languages"] == 5


def test_kept_ids_keep_the_original_order_and_map_back():
    selection = select_vocabulary(make_counts({"fr": FR}), ["fr"], Rules(min_count=2), VOCAB, SPECIALS)
    assert list(selection.kept_ids) == sorted(selection.kept_ids)
    id_map = selection.id_map
    assert all(id_map[old] == new for new, old in enumerate(selection.kept_ids))
    assert id_map[VOCAB.index("the")] == -1


def test_specials_are_kept_even_when_unseen():
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=5), VOCAB, SPECIALS)
    assert kept_tokens(selection)[:5] == VOCAB[:5]
    assert selection.report["always_kept"]["special"] == {"tokens": 5, "added": 5}


def test_keep_list_adds_its_tokens_and_names_the_unknown_ones():
    rules = Rules(min_count=5, keep_tokens=["xyz", "not-a-token"])
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], rules, VOCAB, SPECIALS)
    assert "xyz" in kept_tokens(selection)
    assert selection.missing_keep == ["not-a-token"]
    assert selection.report["always_kept"]["keep_list"]["added"] == 1


def test_keep_chars_keeps_single_characters_and_their_continuations():
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=50, keep_chars=True),
                                  VOCAB, SPECIALS)
    assert kept_tokens(selection)[5:] == ["the", "##s", "a", "##a", "é"]
    assert list(char_token_mask(["a", "##a", "\u2581a", "ab", "##ab", "##", "\u2581"])) == [
        True, True, True, False, False, False, True]


def test_no_rule_means_geotrends_line_share():
    assert Rules().active() == {"min_line_share": GEOTREND_LINE_SHARE}
    assert Rules(min_prob=BISTIL_MIN_PROB).active() == {"min_prob": BISTIL_MIN_PROB}


def test_a_language_absent_from_the_counts_is_a_user_error():
    with pytest.raises(UserError, match="'de' is not in the counts .*en"):
        select_vocabulary(make_counts({"en": EN}), ["en", "de"], Rules(), VOCAB, SPECIALS)


def test_rules_that_keep_only_specials_are_a_user_error():
    with pytest.raises(UserError, match="keep no token of en beyond the special tokens"):
        select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=1000), VOCAB, SPECIALS)


@pytest.mark.parametrize("rules", [Rules(min_count=0), Rules(top_n=-3), Rules(min_line_share=0.0),
                                   Rules(min_prob=2.0), Rules(coverage=1.5)])
def test_out_of_range_rule_values_are_user_errors(rules):
    with pytest.raises(UserError, match="must be"):
        rules.validate()


def test_rule_mask_on_an_empty_language_keeps_nothing():
    zeros = np.zeros(len(VOCAB), dtype=np.int64)
    for name, value in Rules(min_count=1, coverage=0.5, top_n=3).active().items():
        assert not rule_mask(name, value, zeros, zeros, 0).any()


def test_rule_masks_are_boolean_for_every_rule():
    occ = np.asarray(EN, dtype=np.int64)
    for name, value in Rules(min_count=2, min_line_share=0.01, min_prob=0.01, coverage=0.5, top_n=2).active().items():
        assert rule_mask(name, value, occ, occ, 100).dtype == bool, name


def test_a_language_of_one_token_keeps_it():
    one = np.zeros(len(VOCAB), dtype=np.int64)
    one[VOCAB.index("cat")] = 1
    for name, value in Rules(min_count=1, min_prob=1.0, coverage=1.0, top_n=1).active().items():
        assert list(np.flatnonzero(rule_mask(name, value, one, one, 1))) == [VOCAB.index("cat")], name


def test_min_prob_keeps_a_token_seen_once_at_exactly_the_threshold():
    occ = np.zeros(len(VOCAB), dtype=np.int64)
    occ[[5, 7]] = [9, 1]  # 10 tokens: "cat" has probability 0.1
    assert list(np.flatnonzero(rule_mask("min_prob", 0.1, occ, occ, 10))) == [5, 7]
    assert list(np.flatnonzero(rule_mask("min_prob", 0.11, occ, occ, 10))) == [5]


def test_coverage_reached_exactly_by_the_first_tokens_keeps_only_them():
    occ = np.zeros(len(VOCAB), dtype=np.int64)
    occ[[5, 7, 9]] = [5, 3, 2]  # "the" alone is exactly half of the 10 occurrences
    assert list(np.flatnonzero(rule_mask("coverage", 0.5, occ, occ, 10))) == [5]
    assert list(np.flatnonzero(rule_mask("coverage", 0.8, occ, occ, 10))) == [5, 7]


def test_ranking_keeps_ties_in_id_order_over_a_large_vocabulary():
    occurrences = np.random.default_rng(0).integers(0, 4, size=5000)
    seen = np.flatnonzero(occurrences)
    expected = seen[np.lexsort((seen, -occurrences[seen]))]  # by count, then by id
    mask = rule_mask("top_n", 1000, occurrences, occurrences, 5000)
    assert list(np.flatnonzero(mask)) == sorted(expected[:1000])


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="^unknown rule 'top_p'$"):
        rule_mask("top_p", 0.9, np.asarray(EN), np.asarray(EN), 100)


def test_a_missing_language_error_lists_the_languages_counted():
    counts = make_counts({"en": EN, "fr": FR})
    with pytest.raises(UserError) as error:
        select_vocabulary(counts, ["de"], Rules(), VOCAB, SPECIALS)
    assert str(error.value) == ("language 'de' is not in the counts (it has: en, fr); count it first: "
                                "polyglot-distil count --lang de=FILE ...")


def test_counts_of_a_larger_vocabulary_than_the_tokenizers_are_refused():
    with pytest.raises(UserError) as error:
        select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=1), VOCAB[:10], SPECIALS)
    assert str(error.value) == "the counts cover 14 token ids but the tokenizer has only 10"


def test_a_tokenizer_without_special_tokens_keeps_what_the_rules_keep():
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=5), VOCAB, [])
    assert kept_tokens(selection) == ["the", "cat", "##s"]
    assert selection.report["always_kept"]["special"] == {"tokens": 0, "added": 0}


def test_byte_pieces_are_always_kept_and_reported_after_the_specials():
    byte_ids = [VOCAB.index("a"), VOCAB.index("xyz")]
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], Rules(min_count=5), VOCAB, SPECIALS, byte_ids)
    assert kept_tokens(selection)[5:] == ["the", "cat", "##s", "a", "xyz"]
    assert list(selection.report["always_kept"]) == ["special", "byte_fallback", "keep_list", "keep_chars"]
    assert selection.report["always_kept"]["byte_fallback"] == {"tokens": 2, "added": 2}


def test_the_report_names_the_keep_list_tokens_the_vocabulary_lacks():
    rules = Rules(min_count=5, keep_tokens=["xyz", "not-a-token"])
    selection = select_vocabulary(make_counts({"en": EN}), ["en"], rules, VOCAB, SPECIALS)
    assert selection.report["missing_keep_tokens"] == ["not-a-token"]
    assert (selection.report["vocab_size_before"], selection.report["kept"]) == (14, 9)


def test_out_of_range_rule_values_are_named_as_their_options():
    with pytest.raises(UserError) as error:
        Rules(min_count=0).validate()
    assert str(error.value) == "--min-count must be a whole number >= 1, not 0"
    with pytest.raises(UserError) as error:
        Rules(min_line_share=0.0).validate()
    assert str(error.value) == ("--min-line-share must be a fraction in (0, 1], not 0.0 (Geotrend's 0.005% of lines "
                                "is 0.00005)")


def test_rules_that_keep_only_specials_name_the_rules_and_the_languages():
    with pytest.raises(UserError) as error:
        select_vocabulary(make_counts({"en": EN, "fr": FR}), ["en", "fr"], Rules(min_count=1000), VOCAB, SPECIALS)
    assert str(error.value) == ("the rules {'min_count': 1000} keep no token of en, fr beyond the special tokens; "
                                "loosen them (or check that the counts hold text)")


def test_the_selection_table_has_a_row_per_language_and_the_additions():
    counts = make_counts({"en": EN, "fr": FR})
    rules = Rules(min_count=5, keep_tokens=["xyz"])
    table = selection_table(select_vocabulary(counts, ["en", "fr"], rules, VOCAB, SPECIALS).report)
    assert table.splitlines() == [
        "language  min_count  selected  only this language",
        "en                3         3                   2",
        "fr                3         3                   2",
        "union of languages: 5; special: +5; keep list: +1; keep chars: +0",
        "kept 11 of 14 tokens",
    ]


# ---------------------------------------------------------------------------------------------
# The published figure: mBERT en-fr, Geotrend's rule


def bert_mlm_parameters(hidden: int, layers: int, intermediate: int, positions: int, types: int, vocab: int) -> int:
    """Parameters of BertForMaskedLM (decoder tied to the word embeddings, no pooler)."""
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + (hidden * intermediate + intermediate) \
        + (intermediate * hidden + hidden) + 2 * 2 * hidden
    head = hidden * hidden + hidden + 2 * hidden + vocab  # transform, LayerNorm, output bias
    return embeddings + layers * layer + head


def test_parameter_formula_matches_a_real_bert_for_masked_lm():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=777, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
    model = BertForMaskedLM(config)
    assert bert_mlm_parameters(32, 3, 48, 40, 2, 777) == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_mbert_en_fr_keeps_tens_of_thousands_of_tokens_and_a_third_fewer_parameters(mbert_vocab_dir):
    from polyglot_distil.data.corpus import parse_sources
    from polyglot_distil.vocab.count import count_corpora
    from polyglot_distil.models.loading import load_tokenizer, vocab_in_id_order
    from polyglot_distil.vocab.trim import special_token_ids

    xnli = shared("xnli")
    languages = {lang: parse_sources([str(xnli / f"{split}-{lang}.tsv") for split in ("dev", "test")])
                 for lang in ("en", "fr")}
    tokenizer = load_tokenizer(mbert_vocab_dir)
    counts = count_corpora(str(mbert_vocab_dir), languages, tokenizer=tokenizer, show_progress=False)
    vocab = vocab_in_id_order(tokenizer)
    selection = select_vocabulary(counts, ["en", "fr"], Rules(min_line_share=GEOTREND_LINE_SHARE), vocab,
                                  special_token_ids(tokenizer, SimpleNamespace()))  # no config ids
    kept = len(selection.kept_ids)
    before = bert_mlm_parameters(768, 12, 3072, 512, 2, len(vocab))
    after = bert_mlm_parameters(768, 12, 3072, 512, 2, kept)
    assert len(vocab) == 119_547 and round(before / 1e6) == 178  # the published mBERT size
    assert 10_000 <= kept < 100_000
    assert after <= 0.7 * before
