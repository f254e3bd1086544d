"""Corpus input: every source kind reads the same lines; caps sample deterministically; shards
partition the lines; bad sources fail with one clear line."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pytest

from polyglot_distil.data.corpus import (Caps, ReadStats, group_lang_specs, iter_language, parse_lang_spec,
                                    parse_shard, parse_source, read_manifest)
from polyglot_distil.errors import UserError

LINES = ["Le chat dort.", "Il pleut sur la ville.", "Ça va très bien, merci !", "Mbwa analala.", "The end."]


def read_all(*specs, caps=None, shard=(0, 1), stats=None, allow_replacements=False):
    return list(iter_language([parse_source(s) for s in specs], caps, shard, stats, allow_replacements))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_text_reads_like_plain_text(tmp_path, suffix, opener):
    path = tmp_path / f"plain.txt{suffix}"
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(LINES) + "\n")
    assert read_all(str(path)) == LINES


def test_blank_lines_and_short_lines_are_skipped(tmp_path):
    path = tmp_path / "gaps.txt"
    path.write_text("one line here\n\n   \nok\nanother line\n", encoding="utf-8")
    assert read_all(str(path)) == ["one line here", "ok", "another line"]
    assert read_all(str(path), caps=Caps(min_chars=6)) == ["one line here", "another line"]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xe9 au lait\nfine line\n\xff\xfe twice\n")
    stats = ReadStats()
    lines = read_all(str(path), stats=stats, allow_replacements=True)
    assert lines == ["caf\ufffd au lait", "fine line", "\ufffd\ufffd twice"]
    assert stats.replaced_bytes == 3
    with pytest.raises(UserError, match="3 undecodable bytes in the first 29 characters .*: not UTF-8 text"):
        read_all(str(path))  # over 1% of the characters: refused unless allowed


def test_xnli_tsv_defaults_to_premise_and_hypothesis(tmp_path):
    path = tmp_path / "dev-fr.tsv"
    path.write_text("Il dort.\tIl est éveillé.\tcontradiction\nIl pleut.\tLe sol est mouillé.\tentailment\n",
                    encoding="utf-8")
    assert read_all(str(path)) == ["Il dort.", "Il est éveillé.", "Il pleut.", "Le sol est mouillé."]
    assert read_all(f"{path}?columns=1") == ["Il est éveillé.", "Le sol est mouillé."]


def test_tsv_columns_by_header_name(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("id\ttext\n1\tpremière ligne\n2\tseconde ligne\n", encoding="utf-8")
    assert read_all(f"{path}?columns=text") == ["première ligne", "seconde ligne"]


def test_tsv_without_the_named_column_is_an_error(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("id\ttext\n1\tpremière ligne\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no column 'sentence'.*columns: id, text"):
        read_all(f"{path}?columns=sentence")


def test_tsv_short_row_names_file_and_line(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("a\tb\tentailment\nonly one field\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"data.tsv:2: 1 tab-separated fields"):
        read_all(str(path))


def test_jsonl_and_parquet_read_the_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(LINES)), encoding="utf-8")
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"content": LINES, "id": list(range(len(LINES)))}), parquet)
    assert read_all(str(jsonl)) == LINES
    assert read_all(f"{parquet}?column=content") == LINES
    with pytest.raises(UserError, match="no column 'text'"):
        read_all(str(parquet))


def test_documents_with_newlines_become_lines(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"text": "Titre\n\nPremier paragraphe.\nSecond."}) + "\n", encoding="utf-8")
    assert read_all(str(jsonl)) == ["Titre", "Premier paragraphe.", "Second."]


def test_several_sources_of_one_language_are_read_in_order(tmp_path, text_file):
    other = tmp_path / "other.txt"
    other.write_text("extra line\n", encoding="utf-8")
    languages = group_lang_specs([f"fr={text_file}", f"sw={other}", f"fr={other}"])
    assert list(languages) == ["fr", "sw"]
    assert list(iter_language(languages["fr"])) == LINES + ["extra line"]


def test_random_sample_is_deterministic_spread_and_in_corpus_order(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1000)), encoding="utf-8")
    first = read_all(str(path), caps=Caps(max_lines=100, seed=1))
    again = read_all(str(path), caps=Caps(max_lines=100, seed=1))
    other_seed = read_all(str(path), caps=Caps(max_lines=100, seed=2))
    numbers = [int(line.split()[1]) for line in first]
    assert first == again and first != other_seed
    assert len(first) == 100 and numbers == sorted(numbers)
    assert numbers[-1] > 800 and numbers[0] < 200  # spread over the corpus, not its head


def test_byte_cap_keeps_the_sample_within_budget(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"line number {i}\n" for i in range(1000)), encoding="utf-8")
    for sample in ("random", "head"):
        lines = read_all(str(path), caps=Caps(max_bytes=500, sample=sample))
        size = sum(len(line.encode()) for line in lines)
        assert 450 < size <= 500, sample
    head = read_all(str(path), caps=Caps(max_lines=3, sample="head"))
    assert head == ["line number 0", "line number 1", "line number 2"]


def test_shards_partition_the_lines(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"line {i}\n" for i in range(101)), encoding="utf-8")
    whole = read_all(str(path), caps=Caps(max_lines=50))
    parts = [read_all(str(path), caps=Caps(max_lines=50), shard=(i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(whole)
    assert all(parts)


def test_manifest_names_real_sources_and_the_offline_sample():
    from conftest import CORPORA

    manifest = read_manifest(CORPORA / "fr" / "manifest.yaml")
    assert manifest["language"] == "fr"
    assert any(s.kind == "hf" and s.path == "wikimedia/wikipedia" for s in manifest["sources"])
    assert manifest["sample"].endswith("sample.txt")


@pytest.mark.parametrize("spec,message", [
    ("fr", "expected LANG=SOURCE"),
    ("=corpora/fr/sample.txt", "expected LANG=SOURCE"),
    ("f r=x.txt", "may only hold letters"),
    ("fr=does/not/exist.txt", "source file not found: does/not/exist.txt"),
    ("fr=x.parquet?colunm=text", "unknown option 'colunm'"),
])
def test_malformed_lang_specs_are_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_lang_spec(spec)


@pytest.mark.parametrize("spec", ["3", "3/3", "-1/2", "a/b"])
def test_malformed_shards_are_errors(spec):
    with pytest.raises(UserError, match="--shard"):
        parse_shard(spec)


def test_auto_shard_follows_the_launcher_environment(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard("auto") == (1, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert parse_shard("auto") == (0, 1)


@pytest.fixture
def local_hub(monkeypatch):
    """`datasets.load_dataset(name, config, split=..., streaming=True)` answered by an in-memory
    dataset of 4 files (shards), as the hub would answer for a real dataset."""
    import datasets

    records = {"text": [f"article {i}\nparagraph {i}" for i in range(30)], "id": list(range(30))}
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        return datasets.Dataset.from_dict(records).to_iterable_dataset(num_shards=4)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_dataset_is_streamed_and_split_into_lines(local_hub):
    lines = read_all("hf:someone/wiki?config=20231101.sw&split=train")
    assert local_hub == [("someone/wiki", "20231101.sw", "train", True)]
    assert lines[:4] == ["article 0", "paragraph 0", "article 1", "paragraph 1"] and len(lines) == 60
    with pytest.raises(UserError, match=r"no column 'content' \(columns: text, id\)"):
        read_all("hf:someone/wiki?column=content")


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_stream_disjoint_parts_of_a_hub_dataset(local_hub, shards):
    whole = read_all("hf:someone/wiki")
    parts = [read_all("hf:someone/wiki", shard=(i, shards)) for i in range(shards)]
    assert sorted(sum(parts, [])) == sorted(whole)
    assert all(0 < len(p) < len(whole) for p in parts)
    # records, not lines, are split: both lines of a document land in the same shard
    assert all(("paragraph 0" in p) == ("article 0" in p) for p in parts)
