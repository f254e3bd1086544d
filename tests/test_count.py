"""`count` and `merge`: counts equal a straightforward per-line reference count, for tiny and
real tokenizers; shards merged equal one run; bad input fails with one line and no file."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import CORPORA, run_cli
from polyglot_distil.data.corpus import parse_sources
from polyglot_distil.vocab.count import count_corpora, count_lines, counted_units, merge, read_counts, write_counts
from polyglot_distil.data.tokenization import untruncated
from polyglot_distil.models.loading import load_tokenizer


def reference_counts(tokenizer, lines):
    """The obvious way: one encode per line, a Counter for occurrences, a set per line."""
    occurrences, line_counts = Counter(), Counter()
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False, truncation=False)["input_ids"]
        occurrences.update(ids)
        line_counts.update(set(ids))
    return occurrences, line_counts


def assert_matches_reference(tokenizer_dir, lines):
    tokenizer = load_tokenizer(tokenizer_dir)
    with untruncated(tokenizer) as backend:
        occurrences, line_counts, tokens = count_lines(backend, lines, len(tokenizer), batch_lines=7)
    ref_occ, ref_lines = reference_counts(tokenizer, lines)
    assert tokens == sum(ref_occ.values()) > 0
    assert {i: int(c) for i, c in enumerate(occurrences) if c} == dict(ref_occ)
    assert {i: int(c) for i, c in enumerate(line_counts) if c} == dict(ref_lines)


def sample_lines(n=120):
    lines = []
    for lang in ("en", "fr", "sw"):
        with open(CORPORA / lang / "sample.txt", encoding="utf-8") as handle:
            lines.extend(itertools.islice(handle.read().splitlines(), n))
    return lines


def test_counts_equal_reference_for_tiny_wordpiece(tiny_bert_dir):
    assert_matches_reference(tiny_bert_dir, sample_lines())


def test_counts_equal_reference_for_tiny_unigram(tiny_xlmr_dir):
    assert_matches_reference(tiny_xlmr_dir, sample_lines())


def xnli_lines(xnli_dir, lang, n=300):
    lines = []
    with open(xnli_dir / f"dev-{lang}.tsv", encoding="utf-8") as handle:
        for row in itertools.islice(handle, n):
            lines.extend(row.rstrip("\n").split("\t")[:2])
    return lines


@pytest.mark.slow
def test_counts_equal_reference_for_real_mbert_vocabulary(mbert_vocab_dir, xnli_dir):
    assert_matches_reference(mbert_vocab_dir, xnli_lines(xnli_dir, "fr", 100) + xnli_lines(xnli_dir, "zh", 100))


# Lines that could break joining: the separator's text (alone, inside words, twice, cut in two,
# in other cases), other special tokens, empty and whitespace-only lines (Unicode spaces too),
# characters the normaliser drops or spaces out, combining marks at a line's start, a word past
# WordPiece's 100 characters.
TRICKY_LINES = ["[SEP]", "a [SEP] b", "x[SEP]y[SEP]", "[SEP][SEP]", "[sep] [Sep]", "[SEP", "SEP]", "[SE", "P]",
                "", " ", "  \t ", "\u3000", "\u00a0\u2009", "[CLS] [MASK] [UNK] [PAD]", "e\u0301t\u00e9",
                "\u0301start", "\u4e2d\u6587\u5b57", "\x00\ufeff\u200b", "trailing [", "] leading",
                "w" * 150, "la " * 40]


def _both_ways(tokenizer, lines, **options):
    with untruncated(tokenizer) as backend:
        joined = count_lines(backend, lines, len(tokenizer), join=True, **options)
        per_line = count_lines(backend, lines, len(tokenizer), join=False, batch_lines=64)
    return joined, per_line


@pytest.mark.parametrize("chunk_chars,batch_lines", [(1, 5), (23, 7), (64, 1000), (300, 31), (4096, 8192)])
def test_joined_lines_count_exactly_as_one_line_at_a_time(tiny_bert_dir, chunk_chars, batch_lines):
    """WordPiece lines joined with ' [SEP] ' into chunks: counts, line counts and tokens equal
    the per-line reference for every chunk size (one line per chunk to all of them), the tricky
    lines falling at every place in the chunks and batches."""
    tokenizer = load_tokenizer(tiny_bert_dir)
    lines = sample_lines(40)
    for step, tricky in enumerate(TRICKY_LINES):
        lines.insert((7 * step * step) % len(lines), tricky)
    lines = [""] + lines + ["[SEP]", ""]
    joined, per_line = _both_ways(tokenizer, lines, chunk_chars=chunk_chars, batch_lines=batch_lines)
    ref_occ, ref_lines = reference_counts(tokenizer, lines)
    sep = tokenizer.sep_token_id
    assert ref_occ[sep] == 7 and ref_lines[sep] == 5  # the literal [SEP]s count as tokens, per line
    assert joined[2] == per_line[2] == sum(ref_occ.values())
    for counts, lines_of in (joined[:2], per_line[:2]):
        assert {i: int(c) for i, c in enumerate(counts) if c} == dict(ref_occ)
        assert {i: int(c) for i, c in enumerate(lines_of) if c} == dict(ref_lines)


def test_joining_is_chosen_for_bert_wordpiece_only(tiny_bert_dir, tiny_xlmr_dir):
    from polyglot_distil.vocab.count import _join, joined_separator

    bert, xlmr = load_tokenizer(tiny_bert_dir), load_tokenizer(tiny_xlmr_dir)
    with untruncated(bert) as backend:
        assert joined_separator(backend) == ("[SEP]", bert.sep_token_id)
    with untruncated(xlmr) as backend:
        assert joined_separator(backend) is None  # Unigram: per line (joining is slower there)
        with pytest.raises(ValueError, match="cannot be joined"):
            count_lines(backend, ["a"], len(xlmr), join=True)
    chunks = _join(["ab", "c[SEP]d", "", "ef", "gh", "ij"], "[SEP]", 12)
    assert chunks == [("ab", 0, 1, True), ("c[SEP]d", 1, 1, False), (" [SEP] ef", 2, 2, True),
                      ("gh [SEP] ij", 4, 2, True)]


def test_a_chunk_whose_separators_do_not_match_its_lines_is_counted_line_by_line(tiny_bert_dir):
    """The guard: were a line holding '[SEP]' joined with others, the chunk is encoded again one
    line at a time, and the counts stay exact."""
    import numpy as np

    from polyglot_distil.vocab.count import _fold_joined

    tokenizer = load_tokenizer(tiny_bert_dir)
    batch = ["le chat", "x [SEP] y", "", "the cat sat"]
    chunks = [(" [SEP] ".join(batch[:3]), 0, 3, True), (batch[3], 3, 1, True)]  # the literal joined, wrongly
    occurrences, lines_of = np.zeros(len(tokenizer), np.int64), np.zeros(len(tokenizer), np.int64)
    with untruncated(tokenizer) as backend:
        encodings = backend.encode_batch_fast([c[0] for c in chunks], add_special_tokens=False)
        tokens = _fold_joined(backend, encodings, chunks, batch, tokenizer.sep_token_id, occurrences, lines_of)
    ref_occ, ref_lines = reference_counts(tokenizer, batch)
    assert ref_occ[tokenizer.sep_token_id] == 1
    assert tokens == sum(ref_occ.values())
    assert {i: int(c) for i, c in enumerate(occurrences) if c} == dict(ref_occ)
    assert {i: int(c) for i, c in enumerate(lines_of) if c} == dict(ref_lines)


@pytest.mark.slow
def test_joined_counts_equal_per_line_for_real_mbert_vocabulary(mbert_vocab_dir, xnli_dir):
    tokenizer = load_tokenizer(mbert_vocab_dir)
    lines = [line for lang in ("ar", "hi", "th", "zh", "vi", "el") for line in xnli_lines(xnli_dir, lang, 150)]
    for step, tricky in enumerate(TRICKY_LINES):
        lines.insert(37 * step, tricky)
    joined, per_line = _both_ways(tokenizer, lines, chunk_chars=2000, batch_lines=500)
    assert joined[2] == per_line[2] > 10_000
    assert np.array_equal(joined[0], per_line[0]) and np.array_equal(joined[1], per_line[1])
    assert per_line[0][tokenizer.sep_token_id] == 6  # the literal [SEP]s of TRICKY_LINES


@pytest.mark.slow
def test_counts_equal_reference_for_real_xlmr_tokenizer_without_truncation(xlmr_tokenizer_dir, xnli_dir):
    long_line = " ".join(["bonjour le monde"] * 100)  # ~300 pieces: past the file's truncation at 128
    assert_matches_reference(xlmr_tokenizer_dir, xnli_lines(xnli_dir, "sw") + xnli_lines(xnli_dir, "ar") + [long_line])


def test_lines_counts_a_token_once_per_line(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    lines = ["la la la la", "la", "autre chose"]
    (la_id,) = tokenizer("la", add_special_tokens=False)["input_ids"]
    with untruncated(tokenizer) as backend:
        occurrences, line_counts, _ = count_lines(backend, lines, len(tokenizer))
    assert occurrences[la_id] == 5
    assert line_counts[la_id] == 2


def test_count_command_writes_table_and_metadata(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "counts.parquet"
    code = run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                   "--lang", f"fr={CORPORA / 'fr' / 'sample.txt'}", "--out", out, "--no-progress")
    assert code == 0
    table = pq.read_table(out)
    assert table.column_names == ["lang", "token_id", "token", "count", "lines"]
    assert [str(t) for t in table.schema.types] == ["string", "int64", "string", "int64", "int64"]
    counts = read_counts(out)
    assert counts.languages == ["en", "fr"]
    tokenizer = load_tokenizer(tiny_bert_dir)
    fr_lines = (CORPORA / "fr" / "sample.txt").read_text(encoding="utf-8").splitlines()
    ref_occ, ref_lines = reference_counts(tokenizer, [line for line in fr_lines if line.strip()])
    assert counts.totals["fr"].tokens == sum(ref_occ.values())
    assert counts.totals["fr"].lines == sum(1 for line in fr_lines if line.strip())
    assert counts.totals["fr"].chars == sum(len(line) for line in fr_lines if line.strip())
    assert counts.totals["fr"].unk == ref_occ.get(tokenizer.unk_token_id, 0)
    assert {i: int(c) for i, c in enumerate(counts.line_counts["fr"]) if c} == dict(ref_lines)
    rows = table.to_pylist()
    assert all(row["token"] == tokenizer.convert_ids_to_tokens(row["token_id"]) for row in rows[:50])
    assert "fr" in capsys.readouterr().out  # the summary table


def test_merged_shards_equal_one_run(tmp_path, tiny_xlmr_dir):
    specs = {"en": [str(CORPORA / "en" / "sample.txt")], "sw": [str(CORPORA / "sw" / "sample.txt")]}
    languages = {lang: parse_sources(s) for lang, s in specs.items()}
    whole = count_corpora(str(tiny_xlmr_dir), languages, show_progress=False)
    paths = []
    for i in range(3):
        part = count_corpora(str(tiny_xlmr_dir), languages, shard=(i, 3), show_progress=False)
        paths.append(write_counts(part, tmp_path / f"part{i}.parquet"))
    out = tmp_path / "merged.parquet"
    assert run_cli("merge", *paths, "--out", out) == 0
    merged = read_counts(out)
    for lang in specs:
        np.testing.assert_array_equal(merged.occurrences[lang], whole.occurrences[lang])
        np.testing.assert_array_equal(merged.line_counts[lang], whole.line_counts[lang])
        assert merged.totals[lang].lines == whole.totals[lang].lines
        assert merged.totals[lang].tokens == whole.totals[lang].tokens


def test_merge_refuses_counts_of_different_tokenizers(tmp_path, tiny_bert_dir, tiny_xlmr_dir, capsys):
    sources = {"en": parse_sources([str(CORPORA / "en" / "sample.txt")])}
    a = write_counts(count_corpora(str(tiny_bert_dir), sources, show_progress=False), tmp_path / "a.parquet")
    b = write_counts(count_corpora(str(tiny_xlmr_dir), sources, show_progress=False), tmp_path / "b.parquet")
    assert run_cli("merge", a, b, "--out", tmp_path / "c.parquet") == 2
    assert "different tokenizers" in capsys.readouterr().err
    assert not (tmp_path / "c.parquet").exists()
    assert merge([read_counts(a), read_counts(a)]).totals["en"].lines == 2 * read_counts(a).totals["en"].lines


def bad_input_cases(tmp_path, tiny_bert_dir):
    sample = CORPORA / "en" / "sample.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    tsv = tmp_path / "data.tsv"
    tsv.write_text("id\ttext\n1\tbonjour\n", encoding="utf-8")
    existing = tmp_path / "existing.parquet"
    existing.write_bytes(b"keep me")
    return {
        "missing file": (["--model", tiny_bert_dir, "--lang", "en=nope/missing.txt"], "source file not found"),
        "malformed lang": (["--model", tiny_bert_dir, "--lang", f"en:{sample}"], "expected LANG=SOURCE"),
        "empty corpus": (["--model", tiny_bert_dir, "--lang", f"en={empty}"], "empty corpus for language 'en'"),
        "tsv column": (["--model", tiny_bert_dir, "--lang", f"en={tsv}?columns=premise"], "no column 'premise'"),
        "missing tokenizer": (["--model", tmp_path / "no_such_model", "--lang", f"en={sample}"],
                              "tokenizer not found"),
        "hub unreachable": (["--model", "someone/unknown-model", "--lang", f"en={sample}"],
                            "hub is unreachable"),
        "existing output": (["--model", tiny_bert_dir, "--lang", f"en={sample}", "--out", existing],
                            "already exists; pass --overwrite"),
    }


@pytest.mark.parametrize("case", ["missing file", "malformed lang", "empty corpus", "tsv column",
                                  "missing tokenizer", "hub unreachable", "existing output"])
def test_bad_input_gives_one_line_and_no_file(tmp_path, tiny_bert_dir, capsys, monkeypatch, case):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args, message = bad_input_cases(tmp_path, tiny_bert_dir)[case]
    out = tmp_path / "counts.parquet"
    if "--out" not in args:
        args = args + ["--out", out]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_cli("count", *args, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary left behind
    if case == "existing output":
        assert (tmp_path / "existing.parquet").read_bytes() == b"keep me"


def test_overwrite_replaces_an_existing_output(tmp_path, tiny_bert_dir):
    out = tmp_path / "counts.parquet"
    out.write_bytes(b"old")
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                   "--out", out, "--overwrite", "--no-progress") == 0
    assert read_counts(out).totals["en"].lines > 0


def test_auto_shard_writes_one_file_per_rank(tmp_path, tiny_bert_dir, monkeypatch):
    sample = CORPORA / "en" / "sample.txt"
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={sample}", "--shard", "auto",
                       "--out", tmp_path / "counts.parquet", "--no-progress") == 0
    parts = sorted(tmp_path.glob("counts.shard-*-of-2.parquet"))
    assert [p.name for p in parts] == ["counts.shard-0-of-2.parquet", "counts.shard-1-of-2.parquet"]
    lines = sum(read_counts(p).totals["en"].lines for p in parts)
    assert lines == sum(1 for line in sample.read_text(encoding="utf-8").splitlines() if line.strip())


def test_untruncated_restores_the_callers_settings(tiny_bert_dir):
    """Counting sees every token, and the caller's tokenizer keeps its truncation and padding
    (set here as the shared XLM-R tokenizer.json sets them: truncation at 128, padding)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(tiny_bert_dir / "tokenizer.json"))
    backend.enable_truncation(128)
    backend.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    before = (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding)
    long_line = " ".join(["word"] * 400)
    with untruncated(tokenizer) as raw:
        assert len(raw.encode(long_line).ids) > 400
    assert (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding) == before


def _shards(tmp_path, tiny_bert_dir, n: int) -> list:
    sample = CORPORA / "en" / "sample.txt"
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"part{i}.parquet")
        assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={sample}", "--shard", f"{i}/{n}",
                       "--no-progress", "--out", paths[-1]) == 0
    return paths


def test_merging_a_shard_twice_or_missing_one_is_refused(tmp_path, tiny_bert_dir, capsys):
    a, b, c = _shards(tmp_path, tiny_bert_dir, 3)
    capsys.readouterr()
    assert run_cli("merge", a, a, b, c, "--out", tmp_path / "twice.parquet") == 2
    assert "same shard 0/3" in capsys.readouterr().err and not (tmp_path / "twice.parquet").exists()
    assert run_cli("merge", a, c, "--out", tmp_path / "partial.parquet") == 2
    assert "shard 1/3 missing" in capsys.readouterr().err
    assert run_cli("merge", a, c, "--allow-partial", "--out", tmp_path / "partial.parquet") == 0
    assert run_cli("merge", a, b, c, "--out", tmp_path / "all.parquet") == 0


def test_counts_that_cannot_be_are_refused(tmp_path, tiny_bert_dir, capsys):
    """Negative counts, or a token in more lines than it occurs, name the file and row."""
    import pyarrow as pa

    counts = count_corpora(str(tiny_bert_dir), {"en": parse_sources([str(CORPORA / "en" / "sample.txt")])},
                           show_progress=False)
    path = write_counts(counts, tmp_path / "good.parquet")
    table = pq.read_table(path)
    bad = table.set_column(table.column_names.index("count"), "count",
                           pa.array([-5] + table.column("count").to_pylist()[1:], type=table.column("count").type))
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), tmp_path / "bad.parquet")
    assert run_cli("merge", tmp_path / "bad.parquet", "--out", tmp_path / "out.parquet") == 2
    err = capsys.readouterr().err
    assert "bad.parquet: row 0" in err and "counts must be >= 0" in err


def test_outputs_follow_the_umask(tmp_path, tiny_bert_dir):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = tmp_path / "c.parquet"
        assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                       "--no-progress", "--out", out) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        assert run_cli("student", "--teacher", tiny_bert_dir, "--out", tmp_path / "s") == 0
        assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "s" / "config.json").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_missing_local_folder_is_reported_at_once(tmp_path, capsys):
    """Before any hub look-up (which retries for a minute where the hub is unreachable)."""
    assert run_cli("count", "--model", tmp_path / "models" / "nope", "--lang",
                   f"en={CORPORA / 'en' / 'sample.txt'}", "--out", tmp_path / "c.parquet") == 2
    assert "is not an existing folder" in capsys.readouterr().err


def test_overwrite_never_replaces_a_folder_with_a_file(tmp_path, tiny_bert_dir, capsys):
    folder = tmp_path / "counts.parquet"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                   "--overwrite", "--out", folder) == 2
    assert "is a folder" in capsys.readouterr().err and (folder / "mine.txt").read_text() == "keep me"


def test_a_hub_name_while_the_hub_cannot_be_reached_is_looked_up_in_the_cache_only(tmp_path, capsys, monkeypatch):
    """Not offline mode, but nothing answers at the hub's address (a closed local port): the name is
    looked up in the local cache only, so the one line comes at once instead of after the hub
    client's retries (half a minute)."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from polyglot_distil.models import loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for name in loading.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    asked = []

    def from_pretrained(name, **options):
        asked.append(options)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    assert not loading.hub_reachable()
    assert run_cli("count", "--model", "someone/unknown-model", "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                   "--out", tmp_path / "c.parquet") == 2
    assert asked and asked[0].get("local_files_only") is True
    assert "hub is unreachable and no local copy is cached" in capsys.readouterr().err
    assert loading.hub_options(str(tmp_path)) == {}  # a local folder is never looked up anywhere else


# ---------------------------------------------------------------------------------------------
# The folding and merging arithmetic on hand-made ids and counts (no tokenizer)


class SpaceBackend:
    """A stand-in for a `tokenizers.Tokenizer`: one id per whitespace-separated word, "[SEP]" = 1."""

    VOCAB = ["[PAD]", "[SEP]", "le", "chat", "la", "the", "cat", "x"]

    def encode_batch_fast(self, texts, add_special_tokens=False):
        from types import SimpleNamespace

        return [SimpleNamespace(ids=[self.VOCAB.index(w) for w in text.split()]) for text in texts]


def fold_by_hand(lines: list[str]) -> tuple[list[int], list[int]]:
    vocab = SpaceBackend.VOCAB
    occurrences, line_counts = Counter(), Counter()
    for line in lines:
        ids = [vocab.index(w) for w in line.split()]
        occurrences.update(ids)
        line_counts.update(set(ids))
    return [occurrences[i] for i in range(len(vocab))], [line_counts[i] for i in range(len(vocab))]


def test_folding_ids_adds_occurrences_and_counts_each_line_once():
    from polyglot_distil.vocab.count import _fold_ids

    occurrences, line_counts = np.full(5, 10, dtype=np.int64), np.full(5, 10, dtype=np.int64)
    flat = np.array([3, 1, 3, 3, 2, 1, 4], dtype=np.int64)
    line_of = np.array([0, 0, 0, 1, 1, 2, 2**31], dtype=np.int64)  # line numbers past 32 bits' half too
    assert _fold_ids(flat, line_of, occurrences, line_counts) == 7
    assert (occurrences - 10).tolist() == [0, 2, 1, 3, 1]
    assert (line_counts - 10).tolist() == [0, 2, 1, 2, 1]
    assert _fold_ids(flat[:0], line_of[:0], occurrences, line_counts) == 0
    assert (occurrences - 10).tolist() == [0, 2, 1, 3, 1]


@pytest.mark.parametrize("chunk_chars,batch_lines", [(1, 1), (9, 2), (20, 3), (4096, 100)])
def test_counting_joined_chunks_and_line_by_line_equal_a_count_by_hand(chunk_chars, batch_lines):
    from polyglot_distil.vocab.count import _count_batches

    lines = ["le chat", "", "la la la", "x [SEP] x", "the cat the", "[SEP]", "chat x", "le", "the"]
    expected = fold_by_hand(lines)
    size = len(SpaceBackend.VOCAB)
    for separator in (None, ("[SEP]", 1)):
        occurrences, line_counts = np.zeros(size, np.int64), np.zeros(size, np.int64)
        seen = []
        tokens = _count_batches(SpaceBackend(), iter(lines), batch_lines, occurrences, line_counts,
                                lambda n_lines, n_tokens: seen.append((n_lines, n_tokens)), separator, chunk_chars)
        assert tokens == sum(expected[0]) == 16
        assert (occurrences.tolist(), line_counts.tolist()) == expected, separator
        assert [n for n, _ in seen] == [min(batch_lines, len(lines) - i) for i in range(0, len(lines), batch_lines)]
        assert seen[-1][1] == 16 and all(a[1] <= b[1] for a, b in zip(seen, seen[1:]))


def test_a_wrongly_joined_chunk_is_encoded_again_line_by_line_by_hand():
    from polyglot_distil.vocab.count import _fold_joined

    backend = SpaceBackend()
    batch = ["le chat", "x [SEP] x", "", "the cat"]
    chunks = [(" [SEP] ".join(batch[:3]), 0, 3, True), (batch[3], 3, 1, True)]  # the literal [SEP] joined, wrongly
    occurrences, line_counts = np.zeros(8, np.int64), np.zeros(8, np.int64)
    encodings = backend.encode_batch_fast([c[0] for c in chunks])
    assert _fold_joined(backend, encodings, chunks, batch, 1, occurrences, line_counts) == 7
    assert (occurrences.tolist(), line_counts.tolist()) == fold_by_hand(batch)


def test_lines_are_joined_until_the_chunk_reaches_its_size():
    from polyglot_distil.vocab.count import _join

    assert _join(["aaaa", "bb", "cc", "dddd"], "S", 10) == [("aaaa S bb", 0, 2, True), ("cc S dddd", 2, 2, True)]
    # a line counts its length and the joiner's (" S "): 7, 12, 17 characters after each line
    assert _join(["aaaa", "bb", "cc"], "S", 12) == [("aaaa S bb", 0, 2, True), ("cc", 2, 1, True)]
    assert _join(["aaaa", "bb", "cc"], "S", 18) == [("aaaa S bb S cc", 0, 3, True)]
    assert _join(["S", "S", "a"], "S", 100) == [("S", 0, 1, False), ("S", 1, 1, False), ("a", 2, 1, True)]
    # a chunk starts from nothing: at the start, after a flush and after a line of its own
    assert _join(["aaaa", "bb", "cc"], "S", 8) == [("aaaa S bb", 0, 2, True), ("cc", 2, 1, True)]
    assert _join(["aaaa", "bb", "eeee", "f"], "S", 8) == [("aaaa S bb", 0, 2, True), ("eeee S f", 2, 2, True)]
    assert _join(["S", "eeee", "f"], "S", 8) == [("S", 0, 1, False), ("eeee S f", 1, 2, True)]
    assert _join([], "S", 10) == []


def _counts(vocab: list[str], fingerprint: str, shard: str, **langs) -> "Counts":
    from polyglot_distil.vocab.count import Counts, LanguageTotals

    counts = Counts(tokenizer="tok", fingerprint=fingerprint, vocab=vocab, unk_id=1)
    counts.extra = {"shard": shard, "caps": {"max_lines": None}}
    for lang, (occ, lines_of, totals) in langs.items():
        counts.occurrences[lang] = np.asarray(occ, dtype=np.int64)
        counts.line_counts[lang] = np.asarray(lines_of, dtype=np.int64)
        counts.totals[lang] = LanguageTotals(**totals)
    return counts


def test_merging_adds_counts_and_totals_and_fills_token_strings():
    a = _counts(["a", "b", "", ""], "f", "0/2",
                en=([1, 2, 0, 0], [1, 1, 0, 0], dict(lines=3, tokens=3, chars=10, unk=1, replaced_bytes=2,
                                                     seconds=0.1234, sources=["en.txt"])))
    b = _counts(["a", "", "", "d"], "f", "1/2",
                en=([0, 1, 0, 4], [0, 1, 0, 2], dict(lines=2, tokens=5, chars=7, unk=0, replaced_bytes=1,
                                                     seconds=0.2, sources=["other.txt"])),
                fr=([3, 0, 0, 0], [2, 0, 0, 0], dict(lines=2, tokens=3, chars=5, sources=["fr.txt"])))
    merged = merge([a, b])
    assert merged.vocab == ["a", "b", "", "d"] and a.vocab == ["a", "b", "", ""]
    assert merged.occurrences["en"].tolist() == [1, 3, 0, 4] and merged.line_counts["en"].tolist() == [1, 2, 0, 2]
    assert merged.occurrences["fr"].tolist() == [3, 0, 0, 0] and merged.line_counts["fr"].tolist() == [2, 0, 0, 0]
    en = merged.totals["en"]
    assert (en.lines, en.tokens, en.chars, en.unk, en.replaced_bytes, en.distinct, en.seconds, en.sources) == (
        5, 8, 17, 1, 3, 3, 0.323, ["en.txt"])
    assert merged.totals["fr"].distinct == 1 and merged.totals["fr"].sources == ["fr.txt"]
    assert all(a.dtype == np.int64 for a in (*merged.occurrences.values(), *merged.line_counts.values()))
    assert merged.extra == {"shard": "merged", "caps": {"max_lines": None}, "merged_from": ["0/2", "1/2"],
                            "units": counted_units(a) + counted_units(b)}  # what each part counted, listed
    assert [json.loads(u)["shard"] for u in merged.extra["units"]] == ["0/2", "1/2", "1/2"]
    assert (merged.tokenizer, merged.fingerprint, merged.unk_id) == ("tok", "f", 1)
    assert a.occurrences["en"].tolist() == [1, 2, 0, 0]  # the parts are left as they were


def test_merging_counts_of_another_tokenizer_names_both():
    from polyglot_distil.errors import UserError

    a = _counts(["a"], "f", "0/1", en=([1], [1], {}))
    b = _counts(["a"], "g", "0/1", en=([1], [1], {}))
    b.tokenizer = "other"
    with pytest.raises(UserError, match="^cannot merge counts made with different tokenizers: tok and other$"):
        merge([a, b])


def test_the_same_text_under_other_paths_is_refused_other_text_and_other_languages_add():
    """`text_sha256` (the lines a count read): two counts of one text under two paths would count
    its lines twice; other text, the same text in another language's table, a count with no
    digest (an older file, or an empty shard) and a merged file's parts are checked alike."""
    import hashlib

    from polyglot_distil.errors import UserError
    from polyglot_distil.fingerprints import hashed_lines
    from polyglot_distil.vocab.count import check_shards, merge

    digest = hashlib.sha256()
    assert list(hashed_lines(["a b", "", "é"], digest)) == ["a b", "", "é"]
    assert digest.hexdigest() == hashlib.sha256("a b\n\né\n".encode()).hexdigest()
    lone = hashlib.sha256()  # a lone surrogate (a JSON escape in a hub dataset's text) is hashed, not an error
    assert list(hashed_lines(["\ud800"], lone)) == ["\ud800"]
    assert lone.hexdigest() == hashlib.sha256("\ud800\n".encode("utf-8", "surrogatepass")).hexdigest()

    def part(text, source, lang="en", shard="0/1"):
        return _counts(["a"], "f", shard, **{lang: ([1], [1], {"sources": [source], "text_sha256": text})})

    check_shards([part("1" * 64, "a.txt"), part("2" * 64, "b.txt"), part("1" * 64, "c.txt", lang="fr"),
                  part("", "d.txt"), part("", "e.txt")], list("abcde"))
    with pytest.raises(UserError) as error:
        check_shards([part("1" * 64, "a.txt"), part("1" * 64, "copy/a.txt")], ["x.parquet", "y.parquet"])
    assert str(error.value) == ("y.parquet and x.parquet counted the same en text (the same lines, read from "
                                "copy/a.txt and from a.txt); merging both would count those lines twice: pass each "
                                "count once")
    def two(*sources):
        return _counts(["a"], "f", "0/1", en=([1], [1], {"sources": list(sources), "text_sha256": "3" * 64}))

    with pytest.raises(UserError, match=r"read from c\.txt, d\.txt and from a\.txt, b\.txt\)"):
        check_shards([two("a.txt", "b.txt"), two("c.txt", "d.txt")], ["x.parquet", "y.parquet"])
    merged = merge([part("1" * 64, "a.txt"), part("2" * 64, "b.txt")])
    assert merged.totals["en"].text_sha256 == ""  # the parts' digests are in its units
    with pytest.raises(UserError, match="^z.parquet and m.parquet counted the same en text"):
        check_shards([merged, part("2" * 64, "b2.txt")], ["m.parquet", "z.parquet"])


def test_shards_must_come_once_and_all_of_them():
    from polyglot_distil.errors import UserError
    from polyglot_distil.vocab.count import check_shards

    def part(shard, sources=("en.txt",)):
        return _counts(["a"], "f", shard, en=([1], [1], {"sources": list(sources)}))

    check_shards([part("0/2"), part("1/2"), part("0/1"), part("merged")], ["a", "b", "c", "d"])
    check_shards([part("0/2"), part("0/2", sources=("other.txt",)), part("1/2")], ["a", "b", "c"])  # other corpora
    with pytest.raises(UserError) as error:
        check_shards([part("1/3"), part("1/3")], ["x.parquet", "y.parquet"])
    assert str(error.value) == ("y.parquet and x.parquet both hold the same shard 1/3 of the en counts (en.txt); "
                                "merging both would count those lines twice: pass each count once")
    with pytest.raises(UserError) as error:
        check_shards([part("1/3")], ["x.parquet"])
    assert str(error.value) == ("shards 0/3, 2/3 missing from the merge; add them, or pass --allow-partial to merge "
                                "a part on purpose")
    with pytest.raises(UserError) as error:
        check_shards([part("0/2")], ["x.parquet"])
    assert str(error.value) == ("shard 1/2 missing from the merge; add it, or pass --allow-partial to merge a part "
                                "on purpose")
    check_shards([part("1/3")], ["x.parquet"], allow_partial=True)
    with pytest.raises(UserError, match="^shard 0/2 missing"):  # a whole count or a merge before the shard
        check_shards([part("0/1"), part("1/2")], ["a", "b"])
    with pytest.raises(UserError, match="^shard 0/2 missing"):
        check_shards([part("merged"), part("1/2")], ["a", "b"])
    unsharded = part("0/1")
    del unsharded.extra["shard"]  # a counts file without the key counts as one whole count
    check_shards([unsharded, part("0/2"), part("1/2")], ["a", "b", "c"])


def test_a_shard_is_the_same_whatever_the_order_of_its_caps_and_languages_and_another_sample_is_not():
    from polyglot_distil.errors import UserError
    from polyglot_distil.vocab.count import LanguageTotals, check_shards

    def part(caps: dict, langs=("en", "fr")):
        counts = _counts(["a"], "f", "0/2")
        counts.extra["caps"] = caps
        counts.totals = {lang: LanguageTotals(sources=[f"{lang}.txt"]) for lang in langs}
        return counts

    with pytest.raises(UserError, match="same shard 0/2"):
        check_shards([part({"max_lines": 5, "seed": 1}), part({"seed": 1, "max_lines": 5}, ("fr", "en"))],
                     ["a", "b"], allow_partial=True)
    check_shards([part({"max_lines": 5, "seed": 1}), part({"max_lines": 5, "seed": 2})], ["a", "b"],
                 allow_partial=True)


def test_a_language_code_typo_is_one_warning_with_the_code_meant(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    """`--lang ed=...` (for de) is seen at `count`, not at `trim`; a name of one's own still works."""
    from polyglot_distil.data import languages

    monkeypatch.setattr(languages, "_shown", set())
    out = tmp_path / "counts.parquet"
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                   "--lang", f"ed={CORPORA / 'de' / 'sample.txt'}", "--lang", f"pt-BR={CORPORA / 'es' / 'sample.txt'}",
                   "--out", out, "--no-progress") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'ed' is not a language code polyglot-distil knows" in warnings[0], warnings
    assert "did you mean 'de'" in warnings[0] and "--lang ed=" in warnings[0]
    assert read_counts(out).languages == ["en", "ed", "pt-BR"]  # a warning, not a refusal


def test_language_codes_known_and_close():
    from polyglot_distil.data.languages import close_codes, is_known

    assert all(is_known(code) for code in ("en", "sw", "swh", "eng_Latn", "zh_Hans", "pt-BR", "fre", "iw"))
    assert not any(is_known(name) for name in ("ed", "enn", "english", "code", "x"))
    assert close_codes("ed")[0] == "de" and close_codes("enn") == ["en"] and close_codes("sww") == ["sw"]
    assert close_codes("english") == []
