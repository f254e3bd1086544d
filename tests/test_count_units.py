"""`vocab/count.py` on tokenizers built by hand in memory (a dozen tokens, no model, milliseconds):
the counting loop line by line and joined, the choice of joining, the garbage collector and the
progress it reports; `count_corpora`'s totals per language, shards, caps and text checks; the
Parquet table written and read back, and what a damaged one is refused for; the summary table;
the `count` and `merge` commands. tests/test_count.py proves the same with the tiny models' and
real tokenizers end to end; these are the fast unit tests docs/mutation.md runs each mutant
against."""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
from collections import Counter
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401 (below)

from polyglot_distil.data.corpus import Caps, parse_sources
from polyglot_distil.errors import UserError
from polyglot_distil.fingerprints import tokenizer_fingerprint
from polyglot_distil.models.loading import vocab_in_id_order
from polyglot_distil.vocab import count as count_module
from polyglot_distil.vocab.count import CountSettings, Counts, LanguageTotals, MergeSettings, count_corpora, \
    count_lines, counted_units, joined_separator, read_counts, run_count, run_merge, shard_path, summary_table, \
    to_table, write_counts

# `load_tokenizer` imports AutoTokenizer, and pyarrow imports pandas where installed for a table of strings
# (seconds): imported once here, not in each process that mutation testing forks from this module
with contextlib.suppress(ImportError):
    import pandas  # noqa: F401

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "le", "chat", "la", "the", "cat", "##s", "x"]
UNK, SEP = 1, 3


def wordpiece_backend(normalizer=normalizers.BertNormalizer(lowercase=False),
                      pre_tokenizer=pre_tokenizers.BertPreTokenizer(), specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]")):
    """mBERT's shape: WordPiece, BERT's normaliser and pre-tokenizer, the special tokens added, and
    [CLS] ... [SEP] around every input unless it is encoded without special tokens (as counts are)."""
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(WORDS)}, unk_token="[UNK]"))
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.BertProcessing(("[SEP]", SEP), ("[CLS]", 2))
    backend.add_special_tokens(list(specials))
    return backend


def wordpiece(**options):
    return PreTrainedTokenizerFast(tokenizer_object=wordpiece_backend(**options), unk_token="[UNK]",
                                   sep_token="[SEP]", pad_token="[PAD]")


def unigram_backend():
    """XLM-R's shape: Unigram with its unknown piece by id (no `unk_token` on the wrapper)."""
    backend = Tokenizer(models.Unigram([("<pad>", 0.0), ("<unk>", 0.0), ("le", -1.0), ("chat", -1.5), ("l", -3.0),
                                        ("e", -3.0), ("a", -3.0), ("[SEP]", -1.0)], unk_id=1))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return backend


def by_hand(backend, lines):
    """The obvious count: one encode per line, a Counter for occurrences, a set per line."""
    occurrences, line_counts = Counter(), Counter()
    for line in lines:
        ids = backend.encode(line, add_special_tokens=False).ids
        occurrences.update(ids)
        line_counts.update(set(ids))
    return occurrences, line_counts


def as_dict(array) -> dict[int, int]:
    return {i: int(c) for i, c in enumerate(array) if c}


LINES = ["le chat", "", "la la la", "x [SEP] x", "the cats the", "[SEP]", "chat x", "le", "zz the", "\u200b",
         "a [SEP] [SEP] b", "le chat la", "x" * 30, "[sep] [SEP", "cat"]


# ---------------------------------------------------------------------------------------------
# The counting loop


@pytest.mark.parametrize("batch_lines,chunk_chars", [(1, 4096), (2, 1), (4, 12), (5, 30), (100, 4096)])
def test_counts_joined_and_line_by_line_equal_a_count_by_hand(batch_lines, chunk_chars):
    backend = wordpiece_backend()
    occ, lines_of = by_hand(backend, LINES)
    assert occ[SEP] == 4 and lines_of[SEP] == 3 and occ[UNK] > 0  # the literal [SEP]s are tokens of their lines
    for join in (None, True, False):
        seen = []
        occurrences, line_counts, tokens = count_lines(backend, LINES, len(WORDS), batch_lines=batch_lines,
                                                       progress=lambda n, t: seen.append((n, t)), join=join,
                                                       chunk_chars=chunk_chars)
        assert tokens == sum(occ.values()), join
        assert (as_dict(occurrences), as_dict(line_counts)) == (dict(occ), dict(lines_of)), join
        assert occurrences.dtype == line_counts.dtype == np.int64 and len(occurrences) == len(WORDS)
        assert [n for n, _ in seen] == [min(batch_lines, len(LINES) - i) for i in range(0, len(LINES), batch_lines)]
        assert seen[-1][1] == tokens and all(a[1] <= b[1] for a, b in zip(seen, seen[1:]))


def test_a_unigram_tokenizer_counts_line_by_line_by_default_and_cannot_be_joined():
    backend = unigram_backend()
    lines = ["le chat", "lela [SEP]", "", "chat chat zz"]
    occ, lines_of = by_hand(backend, lines)
    occurrences, line_counts, tokens = count_lines(backend, lines, 8, batch_lines=3)
    assert (as_dict(occurrences), as_dict(line_counts), tokens) == (dict(occ), dict(lines_of), sum(occ.values()))
    with pytest.raises(ValueError) as raised:
        count_lines(backend, lines, 8, join=True)
    assert str(raised.value) == "this tokenizer's lines cannot be joined exactly (not BERT's WordPiece with [SEP])"


def test_no_lines_and_lines_of_no_tokens_count_nothing():
    backend = wordpiece_backend()
    for lines in ([], [""], ["", "\u200b", " "]):
        for join in (None, False):
            occurrences, line_counts, tokens = count_lines(backend, lines, len(WORDS), batch_lines=2, join=join)
            assert tokens == 0 and not occurrences.any() and not line_counts.any()


def test_lines_are_joined_only_behind_berts_pretokenizer_and_normaliser_with_a_special_unnormalised_sep():
    assert joined_separator(wordpiece_backend()) == ("[SEP]", SEP)
    assert joined_separator(wordpiece_backend(normalizer=None)) == ("[SEP]", SEP)
    assert joined_separator(wordpiece_backend(normalizer=normalizers.Lowercase())) is None
    assert joined_separator(wordpiece_backend(pre_tokenizer=pre_tokenizers.Whitespace())) is None
    assert joined_separator(wordpiece_backend(specials=("[PAD]", "[UNK]"))) is None
    assert joined_separator(unigram_backend()) is None
    plain = wordpiece_backend(specials=())
    plain.add_tokens(["[SEP]"])  # an added token, but not a special one
    assert joined_separator(plain) is None
    from tokenizers import AddedToken

    normalised = wordpiece_backend(specials=())
    normalised.add_special_tokens([AddedToken("[SEP]", special=True, normalized=True)])
    assert joined_separator(normalised) is None


def test_the_garbage_collector_is_off_while_counting_and_as_it_was_after(monkeypatch):
    backend = wordpiece_backend()
    states = []
    collected = []  # batches folded when the collector ran
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(len(states)))
    for enabled in (True, False):
        gc.enable() if enabled else gc.disable()
        try:
            count_lines(backend, ["le chat"] * 70, len(WORDS), batch_lines=1,
                        progress=lambda n, t: states.append(gc.isenabled()))
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
    assert states == [False] * 140
    # a long count still collects, every GC_EVERY_BATCHES (32) batches read: before the 32nd and the 64th
    # are read, 30 and 62 are folded (one is being encoded)
    assert count_module.GC_EVERY_BATCHES == 32 and collected == [30, 62, 70 + 30, 70 + 62]


def test_the_garbage_collector_is_on_again_after_a_count_that_fails():
    def failing():
        yield "le chat"
        raise OSError("disk gone")

    gc.enable()
    with pytest.raises(OSError):
        count_lines(wordpiece_backend(), failing(), len(WORDS), batch_lines=1)
    assert gc.isenabled()


def test_a_joined_chunk_whose_separators_do_not_number_its_lines_is_counted_line_by_line():
    from polyglot_distil.vocab.count import _fold_joined

    backend = wordpiece_backend()
    batch = ["le chat", "x [SEP] x", "", "the cat", "la [SEP]", "cat la"]
    chunks = [(" [SEP] ".join(batch[:3]), 0, 3, True), (batch[3], 3, 1, True),  # literal [SEP]s joined, wrongly
              (" [SEP] ".join(batch[4:]), 4, 2, True)]
    occurrences, line_counts = np.zeros(len(WORDS), np.int64), np.zeros(len(WORDS), np.int64)
    encodings = backend.encode_batch_fast([c[0] for c in chunks], add_special_tokens=False)
    tokens = _fold_joined(backend, encodings, chunks, batch, SEP, occurrences, line_counts)
    occ, lines_of = by_hand(backend, batch)
    assert occ[SEP] == 2 and tokens == sum(occ.values())
    assert (as_dict(occurrences), as_dict(line_counts)) == (dict(occ), dict(lines_of))


# ---------------------------------------------------------------------------------------------
# count_corpora: per-language totals, shards, caps and the text checks


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


EN = ["le chat", "the cats", "zz zz the", "x"]
FR = ["la la", "", "le chat le chat", "  ", "la x zz"]


def corpora(tmp_path) -> dict:
    return {"en": parse_sources([write_lines(tmp_path / "en.txt", EN)]),
            "fr": parse_sources([write_lines(tmp_path / "fr.txt", FR[:3]), write_lines(tmp_path / "fr2.txt", FR[3:])])}


def test_each_language_is_counted_with_its_totals(tmp_path):
    tokenizer = wordpiece()
    counts = count_corpora("my-tokenizer", corpora(tmp_path), show_progress=False, tokenizer=tokenizer)
    assert (counts.tokenizer, counts.vocab, counts.unk_id) == ("my-tokenizer", WORDS, UNK)
    assert counts.fingerprint == tokenizer_fingerprint(tokenizer, vocab_in_id_order(tokenizer))
    assert counts.languages == ["en", "fr"]
    assert counts.extra == {"shard": "0/1", "caps": asdict(Caps())}
    for lang, lines, sources in (("en", EN, ["en.txt"]), ("fr", [line for line in FR if line.strip()],
                                                          ["fr.txt", "fr2.txt"])):
        occ, lines_of = by_hand(tokenizer.backend_tokenizer, lines)
        assert (as_dict(counts.occurrences[lang]), as_dict(counts.line_counts[lang])) == (dict(occ), dict(lines_of))
        totals = counts.totals[lang]
        assert (totals.lines, totals.tokens, totals.chars, totals.unk, totals.replaced_bytes, totals.distinct) == (
            len(lines), sum(occ.values()), sum(map(len, lines)), occ[UNK], 0, len(occ))
        assert [s.rsplit("/", 1)[1] for s in totals.sources] == sources and 0 <= totals.seconds < 60
        assert totals.seconds == round(totals.seconds, 3)
    assert counts.totals["fr"].unk == 1 and counts.totals["en"].unk == 2


def test_a_unigram_tokenizer_json_has_its_unknown_pieces_counted(tmp_path):
    """A bare Unigram tokenizer.json names no unknown token to the wrapper: its id is the model's."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=unigram_backend())
    assert tokenizer.unk_token_id is None
    counts = count_corpora("t", {"en": parse_sources([write_lines(tmp_path / "en.txt", ["le zz", "zz zz chat"])])},
                           show_progress=False, tokenizer=tokenizer)
    assert counts.unk_id == 1 and counts.totals["en"].unk == 3 == counts.occurrences["en"][1]


def test_joining_is_as_asked(tmp_path):
    """`join=True` (the benchmark's joined count) is refused where it would not be exact."""
    en = {"en": parse_sources([write_lines(tmp_path / "en.txt", EN)])}
    unigram = PreTrainedTokenizerFast(tokenizer_object=unigram_backend())
    with pytest.raises(ValueError, match="cannot be joined exactly"):
        count_corpora("t", en, show_progress=False, tokenizer=unigram, join=True)
    assert count_corpora("t", en, show_progress=False, tokenizer=unigram, join=False).totals["en"].lines == 4


def test_a_tokenizer_without_an_unknown_token_counts_none(tmp_path):
    backend = Tokenizer(models.BPE({c: i for i, c in enumerate("lechat")}, []))  # one token a letter
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    counts = count_corpora("t", {"en": parse_sources([write_lines(tmp_path / "en.txt", ["le chat", "ha"])])},
                           show_progress=False, tokenizer=tokenizer)
    assert counts.unk_id is None and counts.totals["en"].unk == 0 and counts.totals["en"].tokens == 8


def test_the_unknown_token_is_the_wrappers_else_the_models():
    from polyglot_distil.vocab.count import _unk_id

    assert _unk_id(wordpiece()) == UNK
    backend = wordpiece_backend()
    assert _unk_id(PreTrainedTokenizerFast(tokenizer_object=backend)) == UNK  # the model's unk_token
    assert _unk_id(PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="x")) == WORDS.index("x")
    assert _unk_id(PreTrainedTokenizerFast(tokenizer_object=unigram_backend())) == 1
    without = Tokenizer(models.Unigram([("a", 0.0), ("b", -1.0)]))
    assert _unk_id(PreTrainedTokenizerFast(tokenizer_object=without)) is None
    assert _unk_id(PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE({"a": 0, "b": 1}, [])))) is None


def test_shards_partition_the_lines_and_an_empty_shard_is_no_error(tmp_path):
    tokenizer = wordpiece()
    languages = {"en": parse_sources([write_lines(tmp_path / "en.txt", EN)])}
    whole = count_corpora("t", languages, show_progress=False, tokenizer=tokenizer)
    parts = [count_corpora("t", languages, shard=(i, 3), show_progress=False, tokenizer=tokenizer) for i in range(3)]
    assert [p.extra["shard"] for p in parts] == ["0/3", "1/3", "2/3"]
    assert [p.totals["en"].lines for p in parts] == [2, 1, 1]
    assert (sum(p.occurrences["en"] for p in parts) == whole.occurrences["en"]).all()
    one_line = {"en": parse_sources([write_lines(tmp_path / "one.txt", ["le chat"])])}
    empty = count_corpora("t", one_line, shard=(1, 2), show_progress=False, tokenizer=tokenizer)
    assert empty.totals["en"].lines == empty.totals["en"].tokens == 0 and not empty.occurrences["en"].any()


def test_caps_sample_the_lines_and_are_recorded(tmp_path):
    caps = Caps(max_lines=2, sample="head", min_chars=2)
    counts = count_corpora("t", {"en": parse_sources([write_lines(tmp_path / "en.txt", EN)])}, caps,
                           show_progress=False, tokenizer=wordpiece())
    assert counts.totals["en"].lines == 2 and counts.totals["en"].chars == len(EN[0]) + len(EN[1])
    assert counts.extra["caps"] == {"max_lines": 2, "max_bytes": None, "min_chars": 2, "sample": "head", "seed": 0}


def test_an_empty_corpus_and_one_of_no_tokens_are_refused_with_one_line(tmp_path):
    blank, other = write_lines(tmp_path / "blank.txt", ["", "  "]), write_lines(tmp_path / "other.txt", [" "])
    with pytest.raises(UserError) as raised:
        count_corpora("t", {"en": parse_sources([blank, other])}, show_progress=False, tokenizer=wordpiece())
    assert str(raised.value) == f"empty corpus for language 'en': no non-blank lines in {blank}, {other}"
    invisible = write_lines(tmp_path / "invisible.txt", ["\u200b"] * 1200)
    with pytest.raises(UserError) as raised:
        count_corpora("t", {"fr": parse_sources([invisible])}, show_progress=False, tokenizer=wordpiece())
    assert str(raised.value) == (f"language 'fr': the 1,200 lines of {invisible} give no token (only spaces or "
                                 "invisible characters?); give real text")
    one = write_lines(tmp_path / "one.txt", ["\u200b"])
    with pytest.raises(UserError, match="^language 'fr': the 1 lines of .* give no token"):
        count_corpora("t", {"fr": parse_sources([one])}, show_progress=False, tokenizer=wordpiece())


def test_text_that_is_not_utf8_is_refused_unless_replacements_are_allowed(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("le chat \xe9t\xe9\n".encode("latin-1") * 3)
    sources = {"en": parse_sources([str(path)])}
    with pytest.raises(UserError) as raised:
        count_corpora("t", sources, show_progress=False, tokenizer=wordpiece())
    assert str(raised.value).startswith(f"en={path}: 6 undecodable bytes") and str(raised.value).endswith(
        "convert it to UTF-8, or pass --allow-replacements")
    counts = count_corpora("t", sources, show_progress=False, tokenizer=wordpiece(), allow_replacements=True)
    assert counts.totals["en"].replaced_bytes == 6 and counts.totals["en"].lines == 3


class Bar:
    """A stand-in for the progress bar: what `count_corpora` asked of it."""

    made: list = []

    def __init__(self, **options):
        self.options, self.n, self.updates, self.postfix, self.refreshed, self.closed = options, 0, [], [], [], False
        Bar.made.append(self)

    def update(self, n):
        self.n += n
        self.updates.append(n)

    def set_postfix_str(self, text, refresh=True):
        self.postfix.append(text)
        self.refreshed.append(refresh)

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    Bar.made = []
    monkeypatch.setattr(count_module, "progress", Bar)
    return Bar.made


def test_progress_of_plain_text_is_in_bytes_and_ends_at_the_files_size(tmp_path, bars):
    en = tmp_path / "en.txt"
    write_lines(en, EN * 3)
    count_corpora("t", {"en": parse_sources([str(en)])}, batch_lines=5, show_progress=True, tokenizer=wordpiece())
    (bar,) = bars
    assert bar.options == {"total": en.stat().st_size, "desc": "count en", "unit": " bytes", "show": True}
    assert bar.n == en.stat().st_size and len(bar.updates) == 3 and bar.closed
    assert all(text.endswith("k tokens/s") for text in bar.postfix) and len(bar.postfix) == 3
    count_corpora("t", {"en": parse_sources([str(en)])}, shard=(1, 2), show_progress=False, tokenizer=wordpiece())
    assert bars[1].options["total"] == en.stat().st_size / 2 and bars[1].options["show"] is False


def test_progress_counts_lines_under_a_line_cap_or_for_compressed_text(tmp_path, bars):
    packed = tmp_path / "en.txt.gz"
    packed.write_bytes(gzip.compress("".join(line + "\n" for line in EN).encode()))
    count_corpora("t", {"en": parse_sources([str(packed)])}, batch_lines=3, show_progress=None, tokenizer=wordpiece())
    assert bars[0].options == {"total": None, "desc": "count en", "unit": " lines", "show": None}
    assert bars[0].updates == [3, 1]
    plain = write_lines(tmp_path / "plain.txt", EN)
    count_corpora("t", {"fr": parse_sources([plain])}, Caps(max_lines=3), show_progress=False, tokenizer=wordpiece())
    assert bars[1].options["total"] == 3 and bars[1].options["unit"] == " lines" and bars[1].n == 3


def test_the_progress_total_is_known_for_plain_files_and_a_single_count_under_a_line_cap(tmp_path):
    from polyglot_distil.vocab.count import _progress_total

    a, b = write_lines(tmp_path / "a.txt", ["abc"]), write_lines(tmp_path / "b.txt", ["de", "f"])
    packed = tmp_path / "c.txt.gz"
    packed.write_bytes(gzip.compress(b"x\n"))
    both = parse_sources([a, b])
    assert _progress_total(both, Caps(), (0, 1)) == (9, True)
    assert _progress_total(both, Caps(), (1, 4)) == (2.25, True)
    assert _progress_total(both, Caps(max_lines=7), (0, 1)) == (7, False)
    assert _progress_total(both, Caps(max_lines=7), (0, 2)) == (None, False)  # a share of a sample: unknown
    assert _progress_total(both, Caps(max_bytes=7), (0, 1)) == (None, False)
    assert _progress_total(parse_sources([a, str(packed)]), Caps(), (0, 1)) == (None, False)
    for suffix in (".bz2", ".xz"):
        other = tmp_path / f"d.txt{suffix}"
        other.write_bytes(b"")
        assert _progress_total(parse_sources([str(other)]), Caps(), (0, 1)) == (None, False)
    tsv = write_lines(tmp_path / "t.tsv", ["premise\thypothesis", "a\tb"])
    assert _progress_total(parse_sources([tsv]), Caps(), (0, 1)) == (None, False)
    (tmp_path / "a.txt").unlink()
    assert _progress_total(both, Caps(), (0, 1)) == (None, False)


# ---------------------------------------------------------------------------------------------
# The Parquet table, written and read back


def hand_counts() -> Counts:
    counts = Counts(tokenizer="tok", fingerprint="f" * 8, vocab=["<a>", "b", "c", "d", "é\x00"], unk_id=2)
    counts.occurrences = {"en": np.array([0, 3, 1, 0, 7], np.int64), "fr": np.array([2, 0, 0, 0, 0], np.int64)}
    counts.line_counts = {"en": np.array([0, 2, 1, 0, 4], np.int64), "fr": np.array([1, 0, 0, 0, 0], np.int64)}
    counts.totals = {"en": LanguageTotals(lines=4, tokens=11, chars=30, unk=1, replaced_bytes=2, distinct=3,
                                          seconds=0.5, sources=["en.txt"]),
                     "fr": LanguageTotals(lines=1, tokens=2, chars=5, distinct=1, sources=["fr.txt", "b.txt"])}
    counts.extra = {"shard": "1/2", "caps": {"max_lines": 9}}
    return counts


def test_the_table_has_a_row_per_language_and_token_seen_and_its_metadata(tmp_path):
    """Token strings as they are, whatever they hold (a trailing NUL, which a numpy string array drops)."""
    path = write_counts(hand_counts(), tmp_path / "c.parquet")
    assert path == tmp_path / "c.parquet"
    table = pq.read_table(path)
    assert table.column_names == ["lang", "token_id", "token", "count", "lines"]
    assert [str(t) for t in table.schema.types] == ["string", "int64", "string", "int64", "int64"]
    assert [tuple(row.values()) for row in table.to_pylist()] == [
        ("en", 1, "b", 3, 2), ("en", 2, "c", 1, 1), ("en", 4, "é\x00", 7, 4), ("fr", 0, "<a>", 2, 1)]
    assert json.loads(table.schema.metadata[b"polyglot_distil"]) == {
        "format": 1, "tokenizer": "tok", "tokenizer_fingerprint": "ffffffff", "vocab_size": 5, "unk_id": 2,
        "languages": {"en": {"lines": 4, "tokens": 11, "chars": 30, "unk": 1, "replaced_bytes": 2, "distinct": 3,
                             "seconds": 0.5, "sources": ["en.txt"], "text_sha256": ""},
                      "fr": {"lines": 1, "tokens": 2, "chars": 5, "unk": 0, "replaced_bytes": 0, "distinct": 1,
                             "seconds": 0.0, "sources": ["fr.txt", "b.txt"], "text_sha256": ""}},
        "shard": "1/2", "caps": {"max_lines": 9}}


def test_counts_of_no_language_are_an_empty_table_of_the_same_columns():
    table = to_table(Counts(tokenizer="tok", fingerprint="f", vocab=["a"], unk_id=None))
    assert table.num_rows == 0 and table.column_names == ["lang", "token_id", "token", "count", "lines"]
    assert [str(t) for t in table.schema.types] == ["string", "int64", "string", "int64", "int64"]
    assert json.loads(table.schema.metadata[b"polyglot_distil"])["unk_id"] is None


def test_a_table_read_back_is_the_counts_written(tmp_path):
    written = hand_counts()
    back = read_counts(write_counts(written, tmp_path / "c.parquet"))
    assert (back.tokenizer, back.fingerprint, back.unk_id, back.extra) == ("tok", "ffffffff", 2, written.extra)
    assert back.vocab == ["<a>", "b", "c", "", "é\x00"]  # the strings of tokens no language saw are not stored
    assert back.languages == ["en", "fr"] and back.totals == written.totals
    for lang in ("en", "fr"):
        assert back.occurrences[lang].tolist() == written.occurrences[lang].tolist()
        assert back.line_counts[lang].tolist() == written.line_counts[lang].tolist()
        assert back.occurrences[lang].dtype == back.line_counts[lang].dtype == np.int64


def test_an_existing_counts_file_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "c.parquet"
    out.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        write_counts(hand_counts(), out)
    assert out.read_bytes() == b"keep me"
    write_counts(hand_counts(), out, overwrite=True)
    assert read_counts(out).totals["en"].tokens == 11


def _damaged(tmp_path, column: str, row: int, value: int):
    table = to_table(hand_counts())
    values = table.column(column).to_pylist()
    values[row] = value
    bad = table.set_column(table.column_names.index(column), column, pa.array(values, type=pa.int64()))
    path = tmp_path / "bad.parquet"
    pq.write_table(bad, path)
    return path


@pytest.mark.parametrize("column,value,shown", [("count", -1, "2) has count -1 and lines 1"),
                                                ("lines", -1, "2) has count 1 and lines -1"),
                                                ("lines", 2, "2) has count 1 and lines 2"),
                                                ("token_id", -1, "-1) has count 1 and lines 1"),
                                                ("token_id", 5, "5) has count 1 and lines 1")])
def test_counts_that_cannot_be_are_refused_naming_the_row(tmp_path, column, value, shown):
    path = _damaged(tmp_path, column, 1, value)
    with pytest.raises(UserError) as raised:
        read_counts(path)
    assert str(raised.value) == (f"{path}: row 1 (en, token id {shown}: counts must be >= 0, lines <= count and ids within "
                                 "the 5-token vocabulary; count the corpus again")


def test_a_zero_count_is_a_count(tmp_path):
    """Only impossible rows are refused: a token counted 0 times in 0 lines is not one."""
    path = _damaged(tmp_path, "count", 1, 0)
    table = pq.read_table(path)
    lines = table.column("lines").to_pylist()
    lines[1] = 0
    pq.write_table(table.set_column(4, "lines", pa.array(lines, type=pa.int64())), path)
    assert read_counts(path).occurrences["en"].tolist() == [0, 3, 0, 0, 7]


def test_a_file_that_is_not_a_counts_table_is_refused(tmp_path):
    with pytest.raises(UserError) as raised:
        read_counts(tmp_path / "none.parquet")
    assert str(raised.value) == f"counts file not found: {tmp_path / 'none.parquet'}"
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(UserError) as raised:
        read_counts(text)
    assert str(raised.value).startswith(f"cannot read {text} as Parquet: ")
    table = to_table(hand_counts())
    for name, other in (("plain", table.replace_schema_metadata({})),
                        ("no_lines", table.drop(["lines"]).replace_schema_metadata(table.schema.metadata))):
        pq.write_table(other, tmp_path / f"{name}.parquet")
        with pytest.raises(UserError) as raised:
            read_counts(tmp_path / f"{name}.parquet")
        assert str(raised.value) == (f"{tmp_path / name}.parquet is not a polyglot-distil counts file (written by "
                                     "'polyglot-distil count')")


def test_a_counts_file_without_an_unknown_token_reads_back_without_one(tmp_path):
    table = to_table(hand_counts())
    meta = json.loads(table.schema.metadata[b"polyglot_distil"])
    del meta["unk_id"]
    pq.write_table(table.replace_schema_metadata({b"polyglot_distil": json.dumps(meta).encode()}), tmp_path / "o.parquet")
    assert read_counts(tmp_path / "o.parquet").unk_id is None


# ---------------------------------------------------------------------------------------------
# What a count counted, the summary, the settings


def test_a_count_lists_what_it_counted_one_entry_per_language_and_a_merge_its_parts():
    counts = hand_counts()
    assert counted_units(counts) == [
        '{"caps": {"max_lines": 9}, "lang": "en", "shard": "1/2", "sources": ["en.txt"], "tokenizer": "ffffffff"}',
        '{"caps": {"max_lines": 9}, "lang": "fr", "shard": "1/2", "sources": ["fr.txt", "b.txt"], '
        '"tokenizer": "ffffffff"}']
    counts.extra = {}  # written before shards were recorded: one whole count
    assert [json.loads(u)["shard"] for u in counted_units(counts)] == ["0/1", "0/1"]
    assert json.loads(counted_units(counts)[0])["caps"] is None
    counts.extra = {"units": ("a", "b")}
    listed = counted_units(counts)
    assert listed == ["a", "b"] and isinstance(listed, list)


def test_the_summary_has_a_row_of_totals_per_language():
    counts = hand_counts()
    counts.totals["fr"] = LanguageTotals(lines=1234, tokens=0, chars=5, sources=["fr.txt"])
    assert summary_table(counts).splitlines() == [
        "lang  lines  tokens  chars  distinct  unk  unk %  replaced  tokens/s",
        "----  -----  ------  -----  --------  ---  -----  --------  --------",
        "en        4      11     30         3    1  9.091         2        22",
        "fr    1,234       0      5         0    0      -         0         -"]
    counts.totals = {"en": LanguageTotals(lines=1, tokens=12345, chars=1, unk=3, seconds=0.1)}
    assert summary_table(counts).splitlines()[2].split() == ["en", "1", "12,345", "1", "0", "3", "0.024", "0",
                                                            "123,450"]


def test_a_shard_path_names_the_shard_before_the_suffix():
    assert shard_path("out/counts.parquet", (2, 8)) == shard_path("out/counts.parquet", (2, 8))
    assert str(shard_path("out/counts.parquet", (2, 8))) == "out/counts.shard-2-of-8.parquet"


def test_batch_lines_must_be_at_least_one():
    with pytest.raises(UserError) as raised:
        CountSettings(model="m", lang=["en=a"], out="o", batch_lines=0)
    assert str(raised.value) == "--batch-lines must be at least 1"
    assert CountSettings(model="m", lang=["en=a"], out="o", batch_lines=1).batch_lines == 1


# ---------------------------------------------------------------------------------------------
# The count and merge commands


@pytest.fixture
def tokenizer_json(tmp_path) -> str:
    path = tmp_path / "tokenizer.json"
    wordpiece_backend().save(str(path))
    return str(path)


def count_settings(tmp_path, tokenizer_json, **options) -> CountSettings:
    en = write_lines(tmp_path / "en.txt", EN)
    fr = write_lines(tmp_path / "fr.txt", FR)
    return CountSettings(model=tokenizer_json, lang=[f"en={en}", f"fr={fr}"], out=str(tmp_path / "c.parquet"),
                         no_progress=True, **options)


def test_count_writes_the_table_and_reports_the_totals_and_the_summary(tmp_path, tokenizer_json, capsys):
    report = run_count(count_settings(tmp_path, tokenizer_json))
    counts = read_counts(tmp_path / "c.parquet")
    rows = pq.read_table(tmp_path / "c.parquet").num_rows
    assert rows == sum(int(np.count_nonzero(o)) for o in counts.occurrences.values()) > 0
    assert report == {"out": str(tmp_path / "c.parquet"), "rows": rows,
                      "totals": {lang: asdict(t) for lang, t in counts.totals.items()},
                      "lines": [*summary_table(counts).splitlines(), f"wrote {tmp_path / 'c.parquet'} ({rows:,} rows)"]}
    assert counts.tokenizer == tokenizer_json and counts.unk_id == UNK and counts.extra["shard"] == "0/1"
    occ, _ = by_hand(wordpiece_backend(), EN)
    assert as_dict(counts.occurrences["en"]) == dict(occ) and counts.totals["en"].unk == 2
    assert capsys.readouterr().out == ""  # the command prints the lines


def test_count_records_its_caps_and_shard(tmp_path, tokenizer_json):
    run_count(count_settings(tmp_path, tokenizer_json, max_lines=3, max_bytes=1000, min_chars=2, sample="head",
                             seed=5, shard="1/2"))
    counts = read_counts(tmp_path / "c.parquet")  # an explicit shard keeps the name given
    assert counts.extra == {"shard": "1/2", "caps": {"max_lines": 3, "max_bytes": 1000, "min_chars": 2,
                                                     "sample": "head", "seed": 5}}
    assert counts.totals["en"].lines == 1  # the first 3 lines of 2 characters or more, then every second one
    assert counts.totals["en"].chars == len(EN[1])


def test_count_with_an_automatic_shard_writes_the_shards_file(tmp_path, tokenizer_json, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    run_count(count_settings(tmp_path, tokenizer_json, shard="auto"))  # one process: the name given
    assert read_counts(tmp_path / "c.parquet").extra["shard"] == "0/1"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    report = run_count(count_settings(tmp_path, tokenizer_json, shard="auto"))
    assert report["out"] == str(tmp_path / "c.shard-1-of-2.parquet")
    assert read_counts(tmp_path / "c.shard-1-of-2.parquet").extra["shard"] == "1/2"


def test_count_refuses_an_existing_output_before_loading_anything(tmp_path, tokenizer_json, monkeypatch):
    settings = count_settings(tmp_path, tokenizer_json)
    (tmp_path / "c.parquet").write_bytes(b"keep me")
    monkeypatch.setattr(count_module, "load_tokenizer", lambda *a: pytest.fail("loaded before the output was checked"))
    with pytest.raises(UserError, match="c.parquet already exists; pass --overwrite"):
        run_count(settings)
    assert (tmp_path / "c.parquet").read_bytes() == b"keep me"
    settings.out, settings.overwrite = str(tmp_path), True
    with pytest.raises(UserError, match="is a folder; --overwrite replaces a file of the same kind only"):
        run_count(settings)


def test_count_passes_its_options_on(tmp_path, tokenizer_json, monkeypatch, bars):
    """Remote code only when asked, the progress shown unless --no-progress, the batch size, and
    undecodable bytes only with --allow-replacements."""
    from polyglot_distil.models import loading

    asked = []
    monkeypatch.setattr(count_module, "load_tokenizer", lambda name, trust: asked.append(trust) or
                        loading.load_tokenizer(name, trust))
    run_count(count_settings(tmp_path, tokenizer_json, batch_lines=2))
    assert asked == [False] and [b.options["show"] for b in bars] == [False, False]
    assert [len(b.updates) for b in bars] == [2, 2]  # 4 lines in batches of 2, both languages
    settings = count_settings(tmp_path, tokenizer_json, trust_remote_code=True, overwrite=True)
    settings.no_progress = False
    run_count(settings)
    assert asked == [False, True] and [b.options["show"] for b in bars[2:]] == [None, None]
    refused = count_settings(tmp_path, tokenizer_json, overwrite=True)
    allowed = count_settings(tmp_path, tokenizer_json, overwrite=True, allow_replacements=True)
    (tmp_path / "en.txt").write_bytes("le chat \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="undecodable bytes"):
        run_count(refused)
    run_count(allowed)
    assert read_counts(tmp_path / "c.parquet").totals["en"].replaced_bytes == 2


def test_merge_adds_the_shards_prints_the_summary_and_reports(tmp_path, tokenizer_json, capsys):
    whole = count_corpora(tokenizer_json, {"en": parse_sources([write_lines(tmp_path / "en.txt", EN)])},
                          show_progress=False, tokenizer=wordpiece())
    parts = []
    for i in range(2):
        parts.append(str(tmp_path / f"p{i}.parquet"))
        run_count(CountSettings(model=tokenizer_json, lang=[f"en={tmp_path / 'en.txt'}"], out=parts[-1], shard=f"{i}/2",
                                no_progress=True))
    capsys.readouterr()
    report = run_merge(MergeSettings(parts=parts, out=str(tmp_path / "m.parquet")))
    merged = read_counts(tmp_path / "m.parquet")
    assert merged.occurrences["en"].tolist() == whole.occurrences["en"].tolist()
    assert merged.line_counts["en"].tolist() == whole.line_counts["en"].tolist()
    assert merged.totals["en"].lines == 4 and merged.extra["merged_from"] == ["0/2", "1/2"]
    assert report == {"out": str(tmp_path / "m.parquet"), "parts": 2,
                      "totals": {"en": asdict(merged.totals["en"])},
                      "lines": [*summary_table(merged).splitlines(), f"wrote {tmp_path / 'm.parquet'} from 2 parts"]}
    assert capsys.readouterr().out == ""
    with pytest.raises(UserError, match="^shard 1/2 missing from the merge"):
        run_merge(MergeSettings(parts=parts[:1], out=str(tmp_path / "half.parquet")))
    assert not (tmp_path / "half.parquet").exists()
    run_merge(MergeSettings(parts=parts[:1], out=str(tmp_path / "half.parquet"), allow_partial=True))
    assert read_counts(tmp_path / "half.parquet").totals["en"].lines == 2
    with pytest.raises(UserError) as raised:
        run_merge(MergeSettings(parts=[parts[0], parts[0]], out=str(tmp_path / "twice.parquet")))
    assert str(raised.value).startswith(f"{parts[0]} and {parts[0]} both hold the same shard 0/2 of the en counts")
    with pytest.raises(UserError, match="m.parquet already exists; pass --overwrite"):  # before reading the parts
        run_merge(MergeSettings(parts=[str(tmp_path / "none.parquet")], out=str(tmp_path / "m.parquet")))
    with pytest.raises(UserError, match="is a folder; --overwrite replaces a file of the same kind only"):
        run_merge(MergeSettings(parts=[str(tmp_path / "none.parquet")], out=str(tmp_path), overwrite=True))
    run_merge(MergeSettings(parts=parts[1:], out=str(tmp_path / "m.parquet"), allow_partial=True, overwrite=True))
    assert read_counts(tmp_path / "m.parquet").totals["en"].lines == 2


class Encodings:
    """A backend that records the texts each `encode_batch_fast` call is given."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def encode_batch_fast(self, texts, add_special_tokens=True):
        self.calls.append(list(texts))
        return self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):  # the model, normaliser, pre-tokenizer, added tokens
        return getattr(self.backend, name)


def test_joined_lines_are_encoded_once_a_chunk_and_a_wrong_chunk_again_line_by_line():
    """Joining is for speed: a chunk of lines is one input, encoded once, unless its separators do
    not number its lines (then the batch is encoded again, that chunk's lines one by one)."""
    from polyglot_distil.vocab.count import _fold_joined, _join

    backend = Encodings(wordpiece_backend())
    batch = ["le chat", "the cat", "la", "x [SEP] x", "cat", "le"]
    chunks = _join(batch, "[SEP]", 20)
    assert [c[2] for c in chunks] == [2, 1, 1, 2]  # lines per chunk; the literal [SEP] alone
    wrong = chunks[:2] + [(" [SEP] ".join(batch[3:]), 3, 3, True)]
    for given, encoded_again in ((chunks, []), (wrong, [[chunks[0][0], "la", "x [SEP] x", "cat", "le"]])):
        backend.calls.clear()
        occurrences, line_counts = np.zeros(len(WORDS), np.int64), np.zeros(len(WORDS), np.int64)
        _fold_joined(backend, backend.backend.encode_batch_fast([c[0] for c in given], add_special_tokens=False),
                     given, batch, SEP, occurrences, line_counts)
        assert backend.calls == encoded_again
        assert (as_dict(occurrences), as_dict(line_counts)) == tuple(map(dict, by_hand(backend.backend, batch)))
    for join, encoded in ((True, [c[0] for c in chunks]), (None, [c[0] for c in chunks]), (False, batch)):
        backend.calls.clear()
        count_lines(backend, batch, len(WORDS), batch_lines=6, join=join, chunk_chars=20)
        assert backend.calls == [encoded], join  # joined where that is exact, unless told not to


def test_the_progress_shows_the_token_rate_and_the_totals_the_seconds_taken(tmp_path, bars, monkeypatch):
    from types import SimpleNamespace

    clock = iter([100.0, 100.000001, 100.000002, 100.000004, 100.12345])  # start, 3 batches, end
    monkeypatch.setattr(count_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    en = write_lines(tmp_path / "en.txt", EN * 3)
    counts = count_corpora("t", {"en": parse_sources([en])}, batch_lines=5, show_progress=False, tokenizer=wordpiece())
    backend = wordpiece_backend()
    tokens = np.cumsum([sum(len(backend.encode(line, add_special_tokens=False).ids) for line in (EN * 3)[i:i + 5])
                        for i in (0, 5, 10)])
    assert [f"{rate:,.0f}k tokens/s" for rate in tokens / np.array([1e-6, 2e-6, 4e-6]) / 1e3] == bars[0].postfix
    assert bars[0].refreshed == [False] * 3  # the rate is drawn with the bar's next update, not on its own
    assert counts.totals["en"].seconds == 0.123


def test_a_tokenizer_named_is_loaded_without_its_own_code_unless_asked(tmp_path, tokenizer_json, monkeypatch):
    from polyglot_distil.models import loading

    asked = []
    monkeypatch.setattr(count_module, "load_tokenizer", lambda name, trust: asked.append((name, trust)) or
                        loading.load_tokenizer(name, trust))
    en = {"en": parse_sources([write_lines(tmp_path / "en.txt", EN)])}
    assert count_corpora(tokenizer_json, en, show_progress=False).totals["en"].unk == 2
    count_corpora(tokenizer_json, en, show_progress=False, trust_remote_code=True)
    assert asked == [(tokenizer_json, False), (tokenizer_json, True)]
