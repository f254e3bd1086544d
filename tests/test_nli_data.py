"""Reading NLI pairs: XTREME-style TSV, JSONL, Hugging Face datasets, and XNLI splits by language."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import shared

from polyglot_distil.errors import UserError
from polyglot_distil.data.nli import LABELS, NLIData, read_nli, xnli_split


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_labels_are_in_xnli_order():
    assert LABELS == ("entailment", "neutral", "contradiction")


def test_tsv_is_read_in_file_order_with_where_each_pair_came_from(tmp_path):
    tsv = write(tmp_path / "dev-fr.tsv",
                "Il pleut.\tLe sol est mouillé.\tentailment\n"
                "\n"
                "Il pleut.\tIl fait beau.\tcontradiction\n"
                "Il pleut.\tJe reste chez moi.\tneutral\n")
    data = read_nli(tsv)
    assert data.premises == ["Il pleut."] * 3
    assert data.hypotheses == ["Le sol est mouillé.", "Il fait beau.", "Je reste chez moi."]
    assert data.labels.tolist() == [0, 2, 1]
    assert data.lines.tolist() == [1, 3, 4]  # the blank line 2 is skipped, numbering kept
    assert data.where(1) == f"{tsv}:3"


def test_tsv_accepts_xtremes_contradictory_and_a_header_row(tmp_path):
    tsv = write(tmp_path / "train-en.tsv", "premise\thypothesis\tlabel\nA.\tB.\tcontradictory\nA.\tC.\tNeutral \n")
    data = read_nli(tsv)
    assert data.labels.tolist() == [2, 1]
    assert data.lines.tolist() == [2, 3]


def test_tsv_row_with_wrong_column_count_names_file_and_line(tmp_path):
    tsv = write(tmp_path / "bad.tsv", "A.\tB.\tneutral\nA.\tB.\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(tsv))}:2: 2 tab-separated columns, expected 3"):
        read_nli(tsv)


def test_tsv_unknown_label_names_file_and_line(tmp_path):
    tsv = write(tmp_path / "bad.tsv", "A.\tB.\tneutral\nA.\tB.\tneutral\nA.\tB.\tmaybe\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(tsv))}:3: unknown label 'maybe'"):
        read_nli(tsv)


def test_jsonl_takes_label_names_or_ids_and_skips_no_gold_label(tmp_path):
    rows = [{"premise": "A.", "hypothesis": "B.", "label": "contradiction"},
            {"premise": "A.", "hypothesis": "C.", "label": 1},
            {"premise": "A.", "hypothesis": "D.", "label": -1}]
    data = read_nli(write(tmp_path / "nli.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n"))
    assert data.labels.tolist() == [2, 1]
    assert data.hypotheses == ["B.", "C."]
    assert data.skipped == 1


def test_jsonl_unknown_label_names_file_and_line(tmp_path):
    path = write(tmp_path / "nli.jsonl", json.dumps({"premise": "A.", "hypothesis": "B.", "label": 7}) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:1: unknown label 7"):
        read_nli(path)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no labelled pairs"):
        read_nli(write(tmp_path / "empty.tsv", "\n"))


def test_hf_dataset_labels_follow_its_class_names_and_unlabelled_rows_are_skipped(monkeypatch):
    import datasets

    # MultiNLI's layout: ClassLabel names, -1 for pairs without a gold label.
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["contradiction", "entailment", "neutral"])})
    table = datasets.Dataset.from_dict(
        {"premise": ["P0", "P1", "P2"], "hypothesis": ["H0", "H1", "H2"], "label": [0, -1, 2]}, features=features)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or table)
    data = read_nli("hf:nyu-mll/multi_nli?split=validation_matched")
    assert calls == [(("nyu-mll/multi_nli", None), {"split": "validation_matched"})]
    assert data.labels.tolist() == [LABELS.index("contradiction"), LABELS.index("neutral")]
    assert data.lines.tolist() == [0, 2]
    assert data.skipped == 1


def test_xnli_split_without_data_dir_asks_the_hub_for_the_language_and_split(monkeypatch):
    import datasets

    table = datasets.Dataset.from_dict({"premise": ["P"], "hypothesis": ["H"], "label": [1]})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or table)
    data = xnli_split(None, "dev", "sw")
    assert calls == [(("facebook/xnli", "sw"), {"split": "validation"})]
    assert data.labels.tolist() == [1]


def test_xnli_split_reads_the_languages_file_from_a_folder(tmp_path):
    write(tmp_path / "test-sw.tsv", "A.\tB.\tneutral\n")
    assert xnli_split(tmp_path, "test", "sw").hypotheses == ["B."]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_xnli_split_reads_a_compressed_file_and_finds_dev_for_validation(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
    with opener(tmp_path / f"dev-sw.tsv{suffix}", "wt", encoding="utf-8") as handle:
        handle.write("A.\tB.\tneutral\n")
    assert xnli_split(tmp_path, "validation", "sw").hypotheses == ["B."]


def test_xnli_split_names_a_data_path_that_is_not_a_folder_and_an_empty_folder(tmp_path):
    with pytest.raises(UserError) as error:
        xnli_split(write(tmp_path / "file.tsv", ""), "test", "fr")
    assert str(error.value) == (f"--data {tmp_path / 'file.tsv'}: not a folder (expected one holding test-fr.tsv "
                                "files)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as error:
        xnli_split(tmp_path / "empty", "test", "fr")
    assert str(error.value) == (f"no XNLI data for language 'fr': {tmp_path / 'empty' / 'test-fr.tsv'} does not "
                                "exist (it has no test-*.tsv files)")


def test_language_without_a_local_file_lists_those_present(tmp_path):
    write(tmp_path / "test-fr.tsv", "A.\tB.\tneutral\n")
    write(tmp_path / "test-sw.tsv", "A.\tB.\tneutral\n")
    with pytest.raises(UserError, match=r"no XNLI data for language 'xx'.*it has test data for fr, sw"):
        xnli_split(tmp_path, "test", "xx")


def test_language_not_in_xnli_fails_without_reaching_the_hub():
    with pytest.raises(UserError, match=r"no XNLI data for language 'xx': facebook/xnli has ar, bg"):
        xnli_split(None, "test", "xx")


def test_select_and_concat_keep_origins():
    a = NLIData(["p0", "p1"], ["h0", "h1"], np.array([0, 1]), ["a.tsv"] * 2, np.array([1, 2]))
    b = NLIData(["q0"], ["k0"], np.array([2]), ["b.tsv"], np.array([7]), skipped=3)
    both = NLIData.concat([a, b]).select([2, 0])
    assert both.premises == ["q0", "p0"]
    assert both.labels.tolist() == [2, 0]
    assert [both.where(i) for i in range(2)] == ["b.tsv:7", "a.tsv:1"]
    assert NLIData.concat([a, b]).skipped == 3


def test_select_keeps_every_field_of_the_chosen_pairs_and_an_empty_concat_is_empty():
    a = NLIData(["p0", "p1", "p2"], ["h0", "h1", "h2"], np.array([0, 1, 2]), ["a.tsv"] * 3, np.array([1, 2, 4]))
    chosen = a.select(range(1, 3))
    assert (chosen.premises, chosen.hypotheses, chosen.labels.tolist(), chosen.sources, chosen.lines.tolist()) == (
        ["p1", "p2"], ["h1", "h2"], [1, 2], ["a.tsv", "a.tsv"], [2, 4])
    assert len(a.select([])) == 0
    empty = NLIData.concat([])
    assert (len(empty), empty.labels.tolist(), empty.lines.tolist(), empty.skipped) == (0, [], [], 0)
    assert empty.labels.dtype == empty.lines.dtype == np.int64


def test_jsonl_reads_every_row_after_blank_lines_and_unlabelled_ones(tmp_path):
    rows = [{"premise": "A.", "hypothesis": "B.", "label": -1}, {"premise": "A.", "hypothesis": "C.", "label": -1},
            {"premise": 3, "hypothesis": "D.", "label": 0}, {"premise": "A.", "hypothesis": "E.", "label": 2}]
    text = "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]) + "\n"
    data = read_nli(write(tmp_path / "nli.jsonl", text))
    assert (data.premises, data.hypotheses, data.labels.tolist()) == (["3", "A."], ["D.", "E."], [0, 2])
    assert (data.sources, data.lines.tolist(), data.skipped) == ([str(tmp_path / "nli.jsonl")] * 2, [4, 5], 2)


@pytest.mark.parametrize("label", [3, -2, True, 1.0])
def test_jsonl_label_ids_outside_0_to_2_are_unknown(tmp_path, label):
    path = write(tmp_path / "nli.jsonl", json.dumps({"premise": "A.", "hypothesis": "B.", "label": label}) + "\n")
    with pytest.raises(UserError) as error:
        read_nli(path)
    assert str(error.value) == f"{path}:1: unknown label {label!r} (expected entailment, neutral, contradiction)"


@pytest.mark.parametrize("line,message", [
    ('{"premise": "A.", "hypothesis": "B."', "not valid JSON (Expecting ',' delimiter)"),
    ('{"premise": "A.", "label": 0}', "no field 'hypothesis' (each line needs premise, hypothesis, label)"),
    ('{"hypothesis": "B."}', "no field 'premise' (each line needs premise, hypothesis, label)"),
    ('["A.", "B.", 0]', "no field 'premise' (each line needs premise, hypothesis, label)"),
])
def test_a_malformed_jsonl_line_names_the_file_line_and_what_is_wrong(tmp_path, line, message):
    path = write(tmp_path / "nli.jsonl", json.dumps({"premise": "A.", "hypothesis": "B.", "label": 0}) + "\n" + line)
    with pytest.raises(UserError) as error:
        read_nli(path)
    assert str(error.value) == f"{path}:2: {message}"


@pytest.mark.parametrize("name", ["dev.tsv", "dev.tab", "dev.txt", "DEV.TSV", "dev.tsv.gz", "dev.tab.bz2",
                                  "dev.txt.xz", "nli.jsonl", "nli.ndjson", "nli.json", "NLI.JSONL.GZ",
                                  "nli.ndjson.bz2", "nli.json.xz"])
def test_tsv_and_jsonl_files_are_told_apart_by_their_suffix_also_compressed(tmp_path, name):
    import bz2
    import gzip
    import lzma

    text = (json.dumps({"premise": "A.", "hypothesis": "B.", "label": "neutral"}) if "json" in name.lower()
            else "A.\tB.\tneutral") + "\n"
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(name.lower()[name.rfind("."):])
    path = tmp_path / name
    if opener:
        with opener(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    data = read_nli(path)
    assert (data.premises, data.hypotheses, data.labels.tolist()) == (["A."], ["B."], [1])


def test_an_nli_file_of_another_kind_or_a_folder_is_named(tmp_path):
    with pytest.raises(UserError) as error:
        read_nli(write(tmp_path / "nli.csv", "A.,B.,neutral\n"))
    assert str(error.value) == f"NLI file {tmp_path / 'nli.csv'}: expected .tsv (premise, hypothesis, label) or .jsonl"
    with pytest.raises(UserError) as error:
        read_nli(tmp_path)
    assert str(error.value) == f"NLI source {tmp_path} is a folder; name a .tsv or .jsonl file"


@pytest.mark.parametrize("spec,call", [
    ("hf:nyu-mll/multi_nli", ("nyu-mll/multi_nli", None, "train")),
    ("hf:facebook/xnli?config=fr&split=test", ("facebook/xnli", "fr", "test")),
    (" hf:facebook/xnli?split=validation&config=sw ", ("facebook/xnli", "sw", "validation")),
])
def test_an_hf_source_names_the_dataset_its_config_and_split(monkeypatch, spec, call):
    import polyglot_distil.data.nli as nli

    calls = []
    monkeypatch.setattr(nli, "_read_hf", lambda *args: calls.append(args) or NLIData())
    read_nli(spec)
    assert calls == [call]


@pytest.mark.parametrize("spec", ["hf:", "hf:?split=test", "hf:facebook/xnli?lang=fr", "hf:facebook/xnli?config=fr&x=1"])
def test_a_malformed_hf_source_is_named(spec):
    with pytest.raises(UserError) as error:
        read_nli(spec)
    assert str(error.value) == f"NLI source {spec!r}: expected hf:NAME?config=CONFIG&split=SPLIT"


def test_label_counts_have_a_count_for_every_label_even_an_absent_one():
    data = NLIData(["p", "q"], ["h", "k"], np.array([0, 1]), ["a.tsv"] * 2, np.array([1, 2]))
    assert data.label_counts().tolist() == [1, 1, 0]


def test_shared_xnli_test_set_has_5010_balanced_pairs():
    data = read_nli(shared("xnli", "test-fr.tsv"))
    assert len(data) == 5010
    assert data.label_counts().tolist() == [1670, 1670, 1670]


def _encoded_pairs(lengths: list[int]):
    from polyglot_distil.data.nli_batches import EncodedPairs

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return EncodedPairs(np.arange(offsets[-1], dtype=np.int32) % 50 + 5, None, offsets, 0)


def test_length_buckets_cut_padding_and_keep_epochs_whole_and_seeded():
    import torch

    from polyglot_distil.data.nli_batches import NLIBatches

    lengths = list(np.random.default_rng(3).integers(8, 128, size=1000))
    pairs, labels = _encoded_pairs(lengths), np.zeros(1000, dtype=np.int64)
    plain, bucketed = NLIBatches(pairs, labels, 16, seed=1), NLIBatches(pairs, labels, 16, seed=1, length_buckets=20)
    per_epoch = plain.batches_per_epoch
    for data in (plain, bucketed):
        rows = torch.cat([data.batch(k)["rows"] for k in range(per_epoch)])
        assert len(rows) == per_epoch * 16 and len(set(rows.tolist())) == len(rows), "each pair once per epoch"
        for k in (0, 7):
            batch = data.batch(k)
            for i, row in enumerate(batch["rows"].tolist()):  # each row holds its pair, then padding
                assert batch["attention_mask"][i].sum() == lengths[row]

    def padded(data):
        return sum(data.batch(k)["input_ids"].numel() for k in range(per_epoch))

    assert padded(bucketed) < 0.75 * padded(plain)
    again = NLIBatches(pairs, labels, 16, seed=1, length_buckets=20)
    assert torch.equal(again.batch(per_epoch + 3)["rows"], bucketed.batch(per_epoch + 3)["rows"])
    assert not torch.equal(bucketed.batch(3)["rows"], bucketed.batch(per_epoch + 3)["rows"]), "a new order per epoch"
    with pytest.raises(UserError, match="--length-buckets"):
        NLIBatches(pairs, labels, 16, length_buckets=-1)


def test_a_process_not_told_otherwise_is_the_main_one_and_tokenizes_the_pairs(tmp_path, tiny_bert_dir, monkeypatch):
    from polyglot_distil.data.nli_batches import cached_pairs
    from polyglot_distil.models.loading import load_tokenizer

    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0")  # a process waiting for the main one gives up at once
    tokenizer = load_tokenizer(tiny_bert_dir)
    data = _pairs(["a b", "c"], ["c", "a b a"])
    assert len(cached_pairs(tokenizer, data, 16, False, tmp_path / "cache")) == 2
    with pytest.raises(UserError, match="does not see"):
        cached_pairs(tokenizer, data, 16, False, tmp_path / "other", main=False)


def test_nli_pairs_are_tokenized_once_into_the_cache_every_process_maps(tmp_path, tiny_bert_dir, monkeypatch):
    import polyglot_distil.data.nli_batches as nli_batches
    from conftest import CORPORA
    from polyglot_distil.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    data = read_nli(CORPORA / "nli" / "train-en.tsv")
    direct = nli_batches.encode_pairs(tokenizer, data, 64, progress=False)
    cached = nli_batches.cached_pairs(tokenizer, data, 64, False, tmp_path / "cache")
    assert isinstance(cached.input_ids, np.memmap) and cached.pad_id == direct.pad_id
    for name in ("input_ids", "token_type_ids", "offsets"):
        assert np.array_equal(getattr(cached, name), getattr(direct, name)), name

    def no_tokenizing(*_, **__):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(nli_batches, "encode_pairs", no_tokenizing)
    again = nli_batches.cached_pairs(tokenizer, data, 64, False, tmp_path / "cache", main=False)  # another process
    assert np.array_equal(again.input_ids, direct.input_ids)
    with pytest.raises(AssertionError, match="tokenized again"):  # other settings: other pairs
        nli_batches.cached_pairs(tokenizer, data, 32, False, tmp_path / "cache")


class _Seen:
    """A tokenizer seen through another pad id, input names or serialisation (a stand-in for
    tokenizers without a pad token, without token types, or of another vocabulary)."""

    def __init__(self, tokenizer, pad_token_id=None, model_input_names=None, serialised=None):
        self._tokenizer, self.pad_token_id = tokenizer, pad_token_id
        self.model_input_names = model_input_names or tokenizer.model_input_names
        backend = tokenizer.backend_tokenizer
        self.backend_tokenizer = type("Backend", (), {"to_str": lambda _: serialised or backend.to_str()})()

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


def _pairs(premises, hypotheses):
    n = len(premises)
    return NLIData(list(premises), list(hypotheses), np.zeros(n, dtype=np.int64), ["t"] * n, np.arange(n))


def test_each_pair_is_its_own_tokenization_truncated_unpadded_in_any_chunk_size(tiny_bert_dir):
    from polyglot_distil.data.nli_batches import encode_pairs
    from polyglot_distil.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    data = _pairs(["a b", "the cat sat on the mat and the dog sat too", "x", "one two three four"],
                  ["c", "a b", "the dog ran far away from the town and home", "five"])
    pairs = encode_pairs(tokenizer, data, 8, progress=False, chunk=3)  # chunks of 3 and 1, each padded otherwise
    assert (pairs.input_ids.dtype, pairs.token_type_ids.dtype, pairs.offsets.dtype) == (np.int32, np.int8, np.int64)
    assert len(pairs) == 4 and pairs.offsets[0] == 0 and pairs.pad_id == tokenizer.pad_token_id
    for i in range(4):
        alone = tokenizer(data.premises[i], data.hypotheses[i], truncation=True, max_length=8)
        part = slice(pairs.offsets[i], pairs.offsets[i + 1])
        assert pairs.input_ids[part].tolist() == alone["input_ids"], i
        assert pairs.token_type_ids[part].tolist() == alone["token_type_ids"], i
    assert [int(n) for n in np.diff(pairs.offsets)][1:3] == [8, 8]  # the long ones truncated
    whole = encode_pairs(tokenizer, data, 8, progress=False)
    assert np.array_equal(whole.input_ids, pairs.input_ids) and np.array_equal(whole.offsets, pairs.offsets)
    assert len(encode_pairs(tokenizer, data, 8, progress=False, chunk=1)) == 4
    with pytest.raises(UserError, match=r"^--max-length must be at least 8 tokens, not 7$"):
        encode_pairs(tokenizer, data, 7, progress=False)


def test_pairs_without_token_types_or_pad_token_in_and_out_of_the_cache(tmp_path, tiny_bert_dir):
    from polyglot_distil.data.nli_batches import cached_pairs, encode_pairs
    from polyglot_distil.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    data = _pairs(["a b", "c"], ["c", "a b a"])
    untyped = _Seen(tokenizer, pad_token_id=5, model_input_names=["input_ids", "attention_mask"])
    for pairs in (encode_pairs(untyped, data, 16, progress=False), cached_pairs(untyped, data, 16, False, tmp_path)):
        assert pairs.token_type_ids is None and pairs.pad_id == 5 and len(pairs) == 2
        assert pairs.input_ids.dtype == np.int32 and pairs.offsets.dtype == np.int64
    typed = cached_pairs(tokenizer, data, 16, False, tmp_path / "typed")
    assert typed.token_type_ids.dtype == np.int8 and typed.token_type_ids.tolist() == [0, 0, 0, 0, 1, 1] + [0] * 3 + [1] * 4
    padless = _Seen(tokenizer, pad_token_id=None)
    assert encode_pairs(padless, data, 16, progress=False).pad_id == 0
    assert cached_pairs(padless, data, 16, False, tmp_path / "padless").pad_id == 0


def test_the_pairs_cache_key_tells_apart_the_text_where_it_is_split_and_the_tokenizer(tmp_path, tiny_bert_dir,
                                                                                       monkeypatch):
    import polyglot_distil.data.nli_batches as nli_batches
    from polyglot_distil.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    first = _pairs(["a b", "c d"], ["c", "a"])
    barrier = []  # a fresh tokenizer: no truncation set yet, which tokenizing sets
    made = nli_batches.cached_pairs(tokenizer, first, 16, False, tmp_path, barrier=lambda: barrier.append(1))
    assert barrier == [1] and len(made) == 2

    def no_tokenizing(*_, **__):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(nli_batches, "encode_pairs", no_tokenizing)
    assert np.array_equal(nli_batches.cached_pairs(tokenizer, first, 16, False, tmp_path).input_ids, made.input_ids)
    tokenizer(["a", "a b"], padding=True)  # a call elsewhere that pads sets the tokenizer's padding: the same pairs
    assert np.array_equal(nli_batches.cached_pairs(tokenizer, first, 16, False, tmp_path).input_ids, made.input_ids)
    others = [(tokenizer, _pairs(["a", "c d"], ["b c", "a"])),  # the same characters split otherwise
              (tokenizer, _pairs(["a b", "c d"], ["c", "b"])),  # another text
              (tokenizer, _pairs(["a b", "c d", "a"], ["c", "a", "a"])),  # one more pair
              (_Seen(tokenizer, 0, serialised='{"model": "another vocabulary"}'), first)]  # another tokenizer
    for i, (other_tokenizer, data) in enumerate(others):
        copy = tmp_path.parent / f"{tmp_path.name}-{i}"  # the first pairs' cache, which a failed build prunes
        shutil.copytree(tmp_path, copy)
        with pytest.raises(AssertionError, match="tokenized again"):
            nli_batches.cached_pairs(other_tokenizer, data, 16, False, copy)


def test_tokenizing_pairs_shows_a_bar_of_chunks_only_as_asked(tmp_path, tiny_bert_dir, monkeypatch):
    import polyglot_distil.progress
    from polyglot_distil.data.nli_batches import cached_pairs, encode_pairs
    from polyglot_distil.models.loading import load_tokenizer

    bars = []

    def progress(iterable, **options):
        bars.append(options)
        return iterable

    monkeypatch.setattr(polyglot_distil.progress, "progress", progress)
    tokenizer = load_tokenizer(tiny_bert_dir)
    data = _pairs(["a b", "c"], ["c", "a b a"])
    encode_pairs(tokenizer, data, 16, progress=False)
    cached_pairs(tokenizer, data, 16, True, tmp_path)  # --no-progress not given: shown
    encode_pairs(tokenizer, data, 16)
    assert bars == [{"desc": "tokenize", "unit": " chunks", "show": show} for show in (False, True, None)]


def test_pairs_of_2_to_the_31_tokens_or_more_are_refused_in_one_line(tmp_path, monkeypatch):
    import polyglot_distil.data.nli_batches as nli_batches
    from polyglot_distil.data.nli_batches import EncodedPairs

    tokenizer = type("Tokenizer", (), {"pad_token_id": 0, "backend_tokenizer": type("B", (), {
        "to_str": lambda _: "{}"})()})()
    for total in (2**31 - 1, 2**31):  # what the offsets claim; int32 holds the first only
        monkeypatch.setattr(nli_batches, "encode_pairs", lambda *_, total=total, **__: EncodedPairs(
            np.zeros(3, dtype=np.int32), None, np.array([0, 1, 3, total], dtype=np.int64), 0))
        data = _pairs(["a", "b", "c"], ["a", "b", str(total)])
        if total < 2**31:
            assert nli_batches.cached_pairs(tokenizer, data, 8, False, tmp_path).offsets[-1] == total
        else:
            with pytest.raises(UserError, match=r"^3 training pairs hold over 2\*\*31 tokens; give fewer "
                                                r"\(--max-train-pairs\)$"):
                nli_batches.cached_pairs(tokenizer, data, 8, False, tmp_path)


# ---------------------------------------------------------------------------------------------
# Batches of encoded pairs (data/nli_batches.py), on hand-made pairs


def _typed_pairs():
    """5 pairs of lengths 2, 3, 1, 4, 2; ids 10.., types 0/1 alternating; pad id 1."""
    from polyglot_distil.data.nli_batches import EncodedPairs

    offsets = np.array([0, 2, 5, 6, 10, 12], dtype=np.int64)
    return EncodedPairs(np.arange(10, 22, dtype=np.int32), np.arange(12, dtype=np.int8) % 2, offsets, 1)


def test_a_batch_holds_its_rows_pairs_left_aligned_padded_with_the_pad_id_and_their_labels():
    from polyglot_distil.data.nli_batches import NLIBatches

    labels = np.array([2, 0, 1, 1, 0], dtype=np.int8)
    batches = NLIBatches(_typed_pairs(), labels, 2, seed=4)
    assert batches.batches_per_epoch == 2
    for index, epoch, position in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (5, 2, 1)]:
        batch = batches.batch(index)
        rows = np.random.default_rng([4, epoch]).permutation(5)[2 * position:2 * position + 2]
        assert batch["rows"].tolist() == rows.tolist()  # batch k: position k % 2 of epoch k // 2
    batch = NLIBatches(_typed_pairs(), labels, 2, seed=4).batch(0)
    pairs = _typed_pairs()
    width = max(int(pairs.offsets[r + 1] - pairs.offsets[r]) for r in batch["rows"].tolist())
    expected_ids, expected_mask, expected_types = [], [], []
    for r in batch["rows"].tolist():
        start, end = int(pairs.offsets[r]), int(pairs.offsets[r + 1])
        pad = width - (end - start)
        expected_ids.append(list(range(10 + start, 10 + end)) + [1] * pad)
        expected_mask.append([1] * (end - start) + [0] * pad)
        expected_types.append([i % 2 for i in range(start, end)] + [0] * pad)
    assert batch["input_ids"].tolist() == expected_ids and batch["input_ids"].dtype == torch_int64()
    assert batch["attention_mask"].tolist() == expected_mask and batch["attention_mask"].dtype == torch_int64()
    assert batch["token_type_ids"].tolist() == expected_types and batch["token_type_ids"].dtype == torch_int64()
    assert batch["labels"].tolist() == labels[batch["rows"].numpy()].tolist()
    assert batch["labels"].dtype == torch_int64()


def torch_int64():
    import torch

    return torch.int64


def test_a_batch_exactly_as_computed_by_hand_for_seed_0():
    from polyglot_distil.data.nli_batches import NLIBatches

    pairs = _typed_pairs()
    order = np.random.default_rng([0, 0]).permutation(5).tolist()
    batch = NLIBatches(pairs, np.zeros(5, dtype=np.int64), 5).batch(0)  # one batch: every pair
    assert batch["rows"].tolist() == order
    lengths = {0: 2, 1: 3, 2: 1, 3: 4, 4: 2}
    assert batch["attention_mask"].sum(1).tolist() == [lengths[r] for r in order]
    assert batch["input_ids"].shape == (5, 4)


def test_a_batch_of_pairs_without_token_types_has_no_token_type_ids():
    from polyglot_distil.data.nli_batches import EncodedPairs, NLIBatches

    pairs = _typed_pairs()
    untyped = EncodedPairs(pairs.input_ids, None, pairs.offsets, 0)
    batch = NLIBatches(untyped, np.zeros(5, dtype=np.int64), 5).batch(0)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "rows"]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_a_batch_as_large_as_the_data_is_allowed_and_a_larger_one_is_named():
    from polyglot_distil.data.nli_batches import NLIBatches

    assert NLIBatches(_typed_pairs(), np.zeros(5), 5).batches_per_epoch == 1
    assert NLIBatches(_typed_pairs(), np.zeros(5), 2, length_buckets=0).batches_per_epoch == 2
    with pytest.raises(UserError) as raised:
        NLIBatches(_typed_pairs(), np.zeros(5), 6)
    assert str(raised.value) == ("--batch-size 6 is more than the 5 training pairs; "
                                 "give more data or a smaller --batch-size")
    with pytest.raises(UserError) as raised:
        NLIBatches(_typed_pairs(), np.zeros(5), 2, length_buckets=-1)
    assert str(raised.value) == "--length-buckets must be 0 (off) or more, not -1"


def test_one_length_bucket_is_the_plain_order_and_buckets_sort_each_group_by_length():
    from polyglot_distil.data.nli_batches import NLIBatches

    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]  # 11 pairs, all lengths different
    pairs = _encoded_pairs(lengths)
    labels = np.zeros(11, dtype=np.int64)
    plain = NLIBatches(pairs, labels, 2, seed=7)
    assert NLIBatches(pairs, labels, 2, seed=7, length_buckets=1)._order(0).tolist() == plain._order(0).tolist()
    for epoch in (0, 1):
        order = plain._order(epoch)
        bucketed = NLIBatches(pairs, labels, 2, seed=7, length_buckets=5)._order(epoch)  # one group: 10 pairs
        assert sorted(bucketed.tolist()) == list(range(11))
        assert bucketed[10] == order[10]  # the pair left out of the epoch's batches stays last
        by_length = sorted(order[:10].tolist(), key=lambda r: lengths[r])
        batches = {tuple(by_length[i:i + 2]) for i in range(0, 10, 2)}
        assert {tuple(bucketed[i:i + 2].tolist()) for i in range(0, 10, 2)} == batches
        groups = NLIBatches(pairs, labels, 2, seed=7, length_buckets=2)._order(epoch)  # groups of 4, 4, 2
        for start, end in [(0, 4), (4, 8), (8, 10)]:
            chosen = sorted(order[start:end].tolist(), key=lambda r: lengths[r])
            expected = {tuple(chosen[i:i + 2]) for i in range(0, end - start, 2)}
            found = {tuple(groups[i:i + 2].tolist()) for i in range(0, 10, 2)}
            assert expected <= found


def test_epoch_batches_counts_whole_batches_and_names_a_batch_size_out_of_range():
    from polyglot_distil.data.nli_batches import epoch_batches

    assert epoch_batches(10, 3) == 3
    assert epoch_batches(3, 3) == 1
    assert epoch_batches(5, 1) == 5
    with pytest.raises(UserError) as raised:
        epoch_batches(10, 0)
    assert str(raised.value) == "--batch-size must be at least 1, not 0"
    with pytest.raises(UserError) as raised:
        epoch_batches(3, 4)
    assert str(raised.value) == "--batch-size 4 is more than the 3 training pairs; give more data or a smaller --batch-size"


def test_model_inputs_are_the_ids_mask_and_types_only():
    from polyglot_distil.data.nli_batches import model_inputs

    batch = {"input_ids": 1, "attention_mask": 2, "labels": 3, "rows": 4}
    assert model_inputs(batch) == {"input_ids": 1, "attention_mask": 2}
    assert model_inputs({**batch, "token_type_ids": 5}) == {"input_ids": 1, "attention_mask": 2, "token_type_ids": 5}


def test_task_data_samples_the_training_pairs_seeded_in_source_order_and_keeps_every_dev_pair(tmp_path):
    from polyglot_distil.data.nli_batches import read_task_data

    rows = "".join(f"P{i}.\tH{i}.\t{('entailment', 'neutral', 'contradiction')[i % 3]}\n" for i in range(10))
    a, b = write(tmp_path / "a.tsv", rows), write(tmp_path / "b.tsv", "X.\tY.\tneutral\n")
    dev = write(tmp_path / "dev.tsv", "D.\tE.\tentailment\nF.\tG.\tcontradiction\n")
    train, dev_data = read_task_data([str(a), str(b)], [str(dev), str(b)], None, 0)
    assert len(train) == 11 and train.premises[-1] == "X." and dev_data.premises == ["D.", "F.", "X."]
    sample, _ = read_task_data([str(a), str(b)], [str(dev)], 4, 3)
    chosen = np.sort(np.random.default_rng(3).choice(11, 4, replace=False))
    assert sample.premises == [train.premises[i] for i in chosen]
    assert read_task_data([str(a)], [str(dev)], 10, 3)[0].premises == [f"P{i}." for i in range(10)]
    assert read_task_data([str(a)], [str(dev)], 1, 3)[0].premises == [f"P{int(np.random.default_rng(3).choice(10, 1, replace=False)[0])}."]
    with pytest.raises(UserError) as raised:
        read_task_data([str(a)], [str(dev)], 0, 3)
    assert str(raised.value) == "--max-train-pairs must be at least 1, not 0"


def test_undecodable_bytes_in_tsv_and_jsonl_are_read_as_the_replacement_character(tmp_path):
    tsv = tmp_path / "bad-bytes.tsv"
    tsv.write_bytes(b"Caf\xe9 ouvert.\tIl pleut.\tneutral\n")
    assert read_nli(tsv).premises == ["Caf\ufffd ouvert."]
    jsonl = tmp_path / "bad-bytes.jsonl"
    jsonl.write_bytes(b'{"premise": "Caf\xe9.", "hypothesis": "B.", "label": "neutral"}\n')
    assert read_nli(jsonl).premises == ["Caf\ufffd."]


def test_wrong_column_count_and_a_missing_file_have_their_whole_messages(tmp_path):
    tsv = write(tmp_path / "bad.tsv", "A.\tB.\tneutral\tX\n")
    with pytest.raises(UserError) as raised:
        read_nli(tsv)
    assert str(raised.value) == f"{tsv}:1: 4 tab-separated columns, expected 3 (premise, hypothesis, label)"
    with pytest.raises(UserError) as raised:
        read_nli(tmp_path / "absent.tsv")
    assert str(raised.value) == f"NLI file not found: {tmp_path / 'absent.tsv'}"


def test_xnli_split_from_the_hub_passes_a_split_it_does_not_rename_and_says_what_to_do_offline(monkeypatch):
    import datasets

    table = datasets.Dataset.from_dict({"premise": ["P"], "hypothesis": ["H"], "label": [0]})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or table)
    xnli_split(None, "test", "sw")
    assert calls == [(("facebook/xnli", "sw"), {"split": "test"})]

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as raised:
        xnli_split(None, "test", "sw")
    assert str(raised.value) == ("cannot load dataset hf:facebook/xnli?config=sw&split=test: the Hugging Face hub is "
                                 "unreachable (Max retries exceeded); pass --data DIR, a folder of XTREME-style "
                                 "{split}-{lang}.tsv files")


def test_a_language_not_in_xnli_is_told_to_pass_a_data_folder():
    from polyglot_distil.data.nli import XNLI_LANGUAGES

    with pytest.raises(UserError) as raised:
        xnli_split(None, "test", "xx")
    assert str(raised.value) == (f"no XNLI data for language 'xx': facebook/xnli has {', '.join(XNLI_LANGUAGES)}; "
                                 "pass --data DIR with {split}-{lang}.tsv files for others")


def test_languages_present_keep_a_hyphen_in_their_code(tmp_path):
    write(tmp_path / "test-fr.tsv", "A.\tB.\tneutral\n")
    write(tmp_path / "test-zh-Hans.tsv.gz", "")
    with pytest.raises(UserError) as raised:
        xnli_split(tmp_path, "test", "xx")
    assert str(raised.value).endswith("(it has test data for fr, zh-Hans)")


def _fake_hub(monkeypatch, table=None, error=None):
    import datasets

    def load(*args, **kwargs):
        if error is not None:
            raise error
        return table

    monkeypatch.setattr(datasets, "load_dataset", load)


@pytest.mark.parametrize("error, reason", [
    (ValueError("Unknown split \"dev\".\nShould be one of ['train']."), 'Unknown split "dev".'),  # its first line
    (FileNotFoundError(), "FileNotFoundError"),  # no message: its type
    (ConnectionError("Couldn't reach the hub"), "the Hugging Face hub is unreachable (Couldn't reach the hub); "
                                                "use local files instead"),
])
def test_a_dataset_that_cannot_load_names_the_source_and_why(monkeypatch, error, reason):
    _fake_hub(monkeypatch, error=error)
    with pytest.raises(UserError) as raised:
        read_nli("hf:someone/nli?split=dev")
    assert str(raised.value) == f"cannot load dataset hf:someone/nli?split=dev: {reason}"


def test_a_dataset_without_a_needed_column_or_with_other_label_names_is_named(monkeypatch):
    import datasets

    _fake_hub(monkeypatch, datasets.Dataset.from_dict({"premise": ["P"], "sentence2": ["H"], "label": [0]}))
    with pytest.raises(UserError) as raised:
        read_nli("hf:someone/nli?config=en&split=train")
    assert str(raised.value) == ("dataset hf:someone/nli?config=en&split=train: no column 'hypothesis' "
                                 "(columns: premise, sentence2, label)")
    for names in (["yes", "maybe", "no"], ["entailment", "contradiction", "contradictory"]):
        features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=names)})
        _fake_hub(monkeypatch, datasets.Dataset.from_dict({"premise": ["P"], "hypothesis": ["H"], "label": [0]},
                                                          features=features))
        with pytest.raises(UserError) as raised:
            read_nli("hf:someone/nli")
        assert str(raised.value) == (f"dataset hf:someone/nli?split=train: label names {names} are not "
                                     "entailment, neutral, contradiction")


def test_a_dataset_without_label_names_takes_ids_0_to_2_skips_unlabelled_rows_and_names_another(monkeypatch):
    import datasets

    _fake_hub(monkeypatch, datasets.Dataset.from_dict({"premise": ["P0", "P1", "P2", "P3", "P4"],
                                                       "hypothesis": ["H0", "H1", "H2", "H3", "H4"],
                                                       "label": [2, -1, 0, -1, 1]}))
    data = read_nli("hf:someone/nli")
    assert data.labels.tolist() == [2, 0, 1] and data.premises == ["P0", "P2", "P4"]
    assert data.hypotheses == ["H0", "H2", "H4"] and data.lines.tolist() == [0, 2, 4]
    assert data.skipped == 2 and data.where(1) == "hf:someone/nli?split=train:2"
    for label in (3, -2):
        _fake_hub(monkeypatch, datasets.Dataset.from_dict({"premise": ["P0", "P1"], "hypothesis": ["H0", "H1"],
                                                           "label": [0, label]}))
        with pytest.raises(UserError, match=rf"^hf:someone/nli\?split=train row 1: unknown label '?{label}'?"):
            read_nli("hf:someone/nli")
