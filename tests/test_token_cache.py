"""Phase 1's token blocks are tokenized once into a memory-mapped cache (data/token_cache.py), and a
process that cannot see what the main process wrote (several nodes without a shared filesystem)
stops with one line (issue 12, items 4 and 9)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from polyglot_distil.errors import UserError


def _languages(tmp_path: Path, sample_files) -> dict:
    from polyglot_distil.data.corpus import parse_sources

    en = tmp_path / "en.txt"
    en.write_text("".join(f.read_text(encoding="utf-8") for f in sample_files), encoding="utf-8")
    return {"en": parse_sources([str(en)]), "fr": parse_sources([str(sample_files[-1])])}


def _uncached(languages: dict, tokenizer, block_size: int) -> dict:
    from polyglot_distil.data.corpus import iter_language
    from polyglot_distil.data.mlm import encode_text, to_blocks

    return {lang: to_blocks(encode_text(iter_language(sources), tokenizer), block_size, tokenizer.cls_token_id,
                            tokenizer.sep_token_id) for lang, sources in languages.items()}


def test_written_blocks_are_the_blocks_of_the_whole_text(tiny_bert_dir, sample_files):
    from transformers import AutoTokenizer

    from polyglot_distil.data.mlm import encode_text, to_blocks, write_blocks

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    lines = [line for f in sample_files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    handle = io.BytesIO()
    count, tokens = write_blocks(lines, tokenizer, 19, 2, 3, handle, batch_lines=7)  # tails carried across batches
    expected_ids = encode_text(lines, tokenizer)
    expected = to_blocks(expected_ids, 19, 2, 3)
    assert tokens == len(expected_ids) and count == len(expected) > 10
    assert np.array_equal(np.frombuffer(handle.getvalue(), dtype=np.int32).reshape(-1, 19), expected)


def test_cached_blocks_equal_the_uncached_ones_and_a_second_run_tokenizes_nothing(tmp_path, tiny_bert_dir,
                                                                                 sample_files, monkeypatch):
    from transformers import AutoTokenizer

    import polyglot_distil.data.mlm as mlm
    from polyglot_distil.distill.general import load_blocks, split_data
    from polyglot_distil.data.mlm import Masking, Rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    languages = _languages(tmp_path, sample_files)
    blocks = load_blocks(languages, tokenizer, 32, None, 0, False, tmp_path / "cache")
    expected = _uncached(languages, tokenizer, 32)
    for lang in languages:
        assert isinstance(blocks[lang], np.memmap)
        assert np.array_equal(blocks[lang], expected[lang])
    assert len(list((tmp_path / "cache").glob("tokens-*/*.int32"))) == 2

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(mlm, "write_blocks", no_tokenizing)
    again = load_blocks(languages, tokenizer, 32, None, 0, False, tmp_path / "cache")
    assert all(np.array_equal(again[lang], expected[lang]) for lang in languages)
    with pytest.raises(AssertionError, match="tokenized again"):  # other block settings: another cache
        load_blocks(languages, tokenizer, 24, None, 0, False, tmp_path / "cache")

    # training and held-out blocks are views of the map: rows are read when a batch takes them
    masking = Masking.for_tokenizer(tokenizer, tokenizer.vocab_size)
    train, heldout = split_data(again, 4, 4, masking, seed=0)
    assert isinstance(train.blocks["en"], Rows) and train.blocks["en"].blocks is again["en"]
    held_rows = np.asarray(heldout.blocks["en"])
    train_rows = np.asarray(train.blocks["en"])
    assert len(held_rows) == 4 and len(train_rows) == len(expected["en"]) - 4
    assert sorted(map(tuple, np.concatenate([held_rows, train_rows]).tolist())) == \
        sorted(map(tuple, expected["en"].tolist()))


@pytest.mark.slow
def test_runs_sharing_a_token_cache_tokenize_once_keep_each_others_blocks_and_train_alike(tmp_path, tiny_bert_dir,
                                                                                         monkeypatch, capsys):
    """`distil general --token-cache DIR`: the second run on the same text reads the first one's
    blocks (and trains exactly as with its own cache); other block settings add their blocks
    beside them instead of replacing them; a file given as the folder is one line."""
    import polyglot_distil.data.mlm as mlm
    from conftest import CORPORA, metrics_rows, run_cli

    shared = tmp_path / "tokens"

    def general(out, *extra):
        return run_cli("distil", "general", "--teacher", tiny_bert_dir, "--layers", 2, "--lang",
                       f"en={CORPORA / 'en' / 'sample.txt'}", "--lang", f"fr={CORPORA / 'fr' / 'sample.txt'}",
                       "--block-size", 32, "--heldout-blocks", 4, "--batch-size", 4, "--steps", 2, "--lr", 1e-3,
                       "--no-progress", "--out", out, *extra)

    assert general(tmp_path / "own") == 0
    assert general(tmp_path / "first", "--token-cache", shared) == 0
    assert not (tmp_path / "first" / "cache").exists() and len(list(shared.glob("tokens-*"))) == 1
    real = mlm.write_blocks
    calls = []
    monkeypatch.setattr(mlm, "write_blocks", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert general(tmp_path / "second", "--token-cache", shared) == 0
    assert calls == []  # read, not tokenized
    for kind in ("train", "eval"):
        assert metrics_rows(tmp_path / "second", kind) == metrics_rows(tmp_path / "own", kind)
    assert general(tmp_path / "other", "--token-cache", shared, "--block-size", 24) == 0
    assert len(calls) == 2 and len(list(shared.glob("tokens-*"))) == 2  # both kept: the folder is shared
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert general(tmp_path / "bad", "--token-cache", tmp_path / "file") == 2
    err = capsys.readouterr().err
    assert f"--token-cache {tmp_path / 'file'}: not a folder" in err and not (tmp_path / "bad").exists()


def test_the_other_processes_wait_for_the_main_processs_cache(tmp_path, monkeypatch):
    import polyglot_distil.shared_build as shared_build
    from polyglot_distil.data.token_cache import cached_blocks

    monkeypatch.setattr(shared_build, "POLL_SECONDS", 0.02)
    written = []

    def write(lang, handle):
        time.sleep(0.2)  # the other process polls meanwhile
        handle.write(np.full((3, 4), 7, dtype=np.int32).tobytes())
        written.append(lang)
        return 3

    started = threading.Barrier(2)
    results = {}
    other = threading.Thread(target=lambda: results.setdefault("other", cached_blocks(
        tmp_path, {"k": 1}, ["en"], write, 4, main=False, barrier=started.wait)))
    other.start()
    mine = cached_blocks(tmp_path, {"k": 1}, ["en"], write, 4, main=True, barrier=started.wait)
    other.join(timeout=30)
    assert written == ["en"]  # tokenized once, by the main process
    assert np.array_equal(results["other"]["en"], mine["en"]) and mine["en"].shape == (3, 4)


def test_a_failure_on_the_main_process_stops_the_others_with_one_line(tmp_path):
    from polyglot_distil.data.token_cache import cached_blocks

    def fail(lang, handle):
        raise UserError("no text for language 'en'")

    with pytest.raises(UserError, match="no text"):
        cached_blocks(tmp_path, {"k": 2}, ["en"], fail, 4, main=True)
    with pytest.raises(UserError, match=r"main process could not tokenize the corpus \(no text for language 'en'\)"):
        cached_blocks(tmp_path, {"k": 2}, ["en"], fail, 4, main=False)


@pytest.mark.slow
def test_a_process_that_cannot_see_the_cache_names_it_and_asks_for_a_shared_filesystem(tmp_path, monkeypatch):
    from polyglot_distil.data.token_cache import cached_blocks

    # The main process wrote its mark on another node's disk: this process sees an empty folder.
    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0.3")
    with pytest.raises(UserError) as error:
        cached_blocks(tmp_path / "cache", {"k": 3}, ["en"], lambda lang, handle: 0, 4, main=False)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "cache" / "tokens-") in message
    assert "filesystem every node sees" in message


@pytest.mark.slow
def test_a_process_that_cannot_see_the_checkpoint_folder_stops_with_one_line(tmp_path, monkeypatch):
    from polyglot_distil.distill.training import _save_checkpoint

    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0.2")
    saved = []
    accelerator = SimpleNamespace(is_main_process=False, wait_for_everyone=lambda: None,
                                  save_state=lambda folder: saved.append(folder))
    with pytest.raises(UserError) as error:  # the main process made .step-3.tmp where this process cannot see it
        _save_checkpoint(accelerator, tmp_path, {"step": 3}, {}, keep=2)
    assert str(tmp_path / "checkpoints" / ".step-3.tmp") in str(error.value)
    assert "shared filesystem" in str(error.value) and not saved
    (tmp_path / "checkpoints" / ".step-3.tmp").mkdir(parents=True)  # seen: the process writes its state
    _save_checkpoint(accelerator, tmp_path, {"step": 3}, {}, keep=2)
    assert saved == [str(tmp_path / "checkpoints" / ".step-3.tmp")]


@pytest.mark.slow
def test_a_process_that_cannot_see_the_run_folder_stops_with_one_line(tmp_path, monkeypatch):
    from polyglot_distil import pipeline

    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0.2")
    monkeypatch.setattr(pipeline, "_share_plan", lambda steps, error: ([], None))
    run = SimpleNamespace(run_dir=tmp_path / "run")  # the main process locked it on another node's disk
    with pytest.raises(UserError) as error:
        pipeline._run_steps(run, [], None, None, rank=1, world=2)
    assert str(tmp_path / ".run.lock") in str(error.value) and "shared filesystem" in str(error.value)
    (tmp_path / ".run.lock").write_text("{}")  # seen: nothing to run, nothing ran
    assert pipeline._run_steps(run, [], None, None, rank=1, world=2) == []
