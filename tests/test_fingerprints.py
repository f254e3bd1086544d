"""Every fingerprint keeps its value: caches, completion markers and training runs made by an
earlier version are recognised by this one. Each value below was computed, for these fixed inputs,
by the code that wrote those records before the fingerprints were gathered into one module; a
change here would make every cache miss, every completed `run` stage run again and every resumed
training run refuse its checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

MTIME_NS = 1_700_000_000_123_456_789


def fixed_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return path


def tiny_tokenizer():
    """A WordLevel tokenizer built in memory, the same on every machine."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "a",
                                         "dog", "ran", "on", "mat"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    fixed_file(folder / "config.json", b'{"hidden_size": 32}')
    fixed_file(folder / "model.safetensors", b"w" * 64)
    fixed_file(folder / "README.md", b"notes")  # not part of what a model computes
    fixed_file(folder / "training_args.bin", b"args")
    return folder


def test_a_files_fingerprint_is_its_size_time_and_content_hash(tmp_path):
    from polyglot_distil.fingerprints import file_fingerprint

    path = fixed_file(tmp_path / "vocab.txt", b"hello fingerprints\n")
    assert file_fingerprint(path) == {
        "size": 19, "mtime_ns": MTIME_NS,
        "sha256": "f9f5e2fb535b3b0daa6f234ecbd25ae63f699c113575e6fa03dac8ab7fd19ebf"}


def test_a_folders_fingerprint_is_that_of_its_model_files(model_folder):
    from polyglot_distil.fingerprints import file_fingerprint, path_fingerprint

    found = path_fingerprint(model_folder)
    assert sorted(found) == ["config.json", "model.safetensors", "training_args.bin"]
    assert found["model.safetensors"] == file_fingerprint(model_folder / "model.safetensors")


def test_a_runs_input_fingerprints_name_its_existing_paths(tmp_path, model_folder, monkeypatch):
    from polyglot_distil.fingerprints import input_fingerprints, path_fingerprint

    monkeypatch.chdir(tmp_path)
    fixed_file(tmp_path / "en.txt", b"the cat sat\n")
    found = input_fingerprints({"teacher": "model", "languages": {"en": ["en.txt?columns=text", "hf:wiki"]},
                                "out": "model/run", "missing": "nowhere.txt"}, skip=["model/run"])
    assert found == {"model": path_fingerprint(Path("model")), "en.txt": path_fingerprint(Path("en.txt"))}


def test_the_tokenizer_fingerprint_of_counts_is_unchanged():
    from polyglot_distil.fingerprints import tokenizer_fingerprint
    from polyglot_distil.models.loading import vocab_in_id_order

    tokenizer = tiny_tokenizer()
    expected = "06d2574846fa2a6c0e0226e1948c1ff881e29623e5fbb1d741382b831c0c0211"
    assert tokenizer_fingerprint(tokenizer, vocab_in_id_order(tokenizer)) == expected


def test_the_token_cache_key_is_unchanged():
    from polyglot_distil.data import token_cache
    from polyglot_distil.fingerprints import token_cache_key

    assert token_cache_key(token_cache.FORMAT, {"tokenizer": "abc", "block_size": 256, "languages": ["en", "fr"]}) == "04ecf8e8d5a638a6cda2"


def test_the_phase_1_token_cache_folder_is_unchanged(tmp_path, monkeypatch):
    from polyglot_distil.data.corpus import parse_sources
    from polyglot_distil.distill.general import load_blocks

    monkeypatch.chdir(tmp_path)
    fixed_file(tmp_path / "en.txt", b"the cat sat on the mat\na dog ran\n" * 8)
    load_blocks({"en": parse_sources(["en.txt"])}, tiny_tokenizer(), 8, None, 0, False, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").glob("tokens-*")) == ["tokens-372e2a44c2fd7330e94c"]


def test_the_nli_pairs_token_cache_folder_is_unchanged(tmp_path):
    from polyglot_distil.data.nli import NLIData
    from polyglot_distil.data.nli_batches import cached_pairs

    data = NLIData(["the cat sat", "a dog ran"], ["the mat", "on a mat"], np.asarray([0, 2], dtype=np.int64))
    tokenizer = tiny_tokenizer()
    cached_pairs(tokenizer, data, 16, False, tmp_path / "cache")
    tokenizer("the cat", truncation=True, max_length=4, padding="max_length")  # sets truncation and padding
    cached_pairs(tokenizer, data, 16, False, tmp_path / "cache")  # which the key leaves out
    assert sorted(p.name for p in (tmp_path / "cache").glob("tokens-*")) == ["tokens-7ac1adc27757185d0191"]


def test_the_xnli_prediction_key_is_unchanged(model_folder, monkeypatch):
    import transformers

    from polyglot_distil.data.nli import NLIData
    from polyglot_distil.eval.predict import CACHE_FORMAT
    from polyglot_distil.fingerprints import prediction_key

    monkeypatch.setattr(torch, "__version__", "2.0.0")
    monkeypatch.setattr(transformers, "__version__", "5.0.0")
    data = NLIData(["the cat sat", "a dog ran"], ["the mat", "on a mat"], np.asarray([0, 2], dtype=np.int64))
    assert prediction_key(CACHE_FORMAT, str(model_folder), data.premises, data.hypotheses, data.labels,
                          {"batch_size": 8, "max_length": 128}) == "ca5bb410093dbc054815e9fbef409f0c"


def test_the_teacher_cache_key_is_unchanged(model_folder):
    from polyglot_distil.data.nli_batches import EncodedPairs
    from polyglot_distil.distill.teacher_cache import FORMAT
    from polyglot_distil.fingerprints import teacher_cache_key

    pairs = EncodedPairs(np.asarray([5, 6, 7, 8, 9], dtype=np.int32), None, np.asarray([0, 2, 5], dtype=np.int64), 0)
    assert teacher_cache_key(FORMAT, model_folder, pairs.input_ids, pairs.offsets, [0, 2], [1], 128) == "c3c7ace523f5f612f0ccdec3695deb3c"


def test_the_body_fingerprint_of_a_lottery_ticket_is_unchanged():
    from polyglot_distil.fingerprints import body_fingerprint

    weights = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    assert body_fingerprint(weights, ["b", "a"]) == "ece6d4f91880b593bd5631cb0fa37ef103a451abd05f6088009f35cb1a384d57"


def test_a_training_runs_settings_hash_is_unchanged():
    from polyglot_distil.fingerprints import run_config_hash

    assert run_config_hash({"lr": 0.0001, "steps": 10, "languages": {"en": ["a.txt"]}}) == "8c1a6d5c62299e98"


def test_a_run_markers_argv_hash_is_unchanged():
    from polyglot_distil.fingerprints import argv_hash

    assert argv_hash(["trim", "--counts", "counts.json", "--keep", "0.9"]) == "968f197f15121f66"


def test_a_run_configs_stage_marker_hashes_are_unchanged(tmp_path, monkeypatch):
    """What `run` keeps in each completed stage's DONE.json, for a config that also uses an old
    option name (`eval.limit`): a completed stage made before stays done."""
    from polyglot_distil.pipeline import Run, load_config, settings_hash, stage_values, validate

    monkeypatch.chdir(tmp_path)
    for name in ("corpora/en.txt", "corpora/sw.txt", "nli/train-en.tsv", "nli/dev-en.tsv", "nli/test-sw.tsv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    (tmp_path / "config.yaml").write_text(
        "run_dir: run\nmodel: teacher\nlanguages: {source: en, target: sw}\n"
        "corpora: {en: [corpora/en.txt], sw: [corpora/sw.txt]}\n"
        "task_data: {train: nli/train-en.tsv, dev: nli/dev-en.tsv}\neval_data: nli\n"
        "trim: {min_count: 2, keep_chars: true}\nstudent: {layers: 2}\n"
        "general: {steps: 40, batch_size: 8, lr: 5.0e-4}\neval: {split: test, limit: 5}\n")
    config = load_config("config.yaml")
    assert {s.name: settings_hash(stage_values(Run(config), s), s) for s in validate(config)} == {
        "count": "e67b13d414d9e1be", "trim": "e121f7cf74272498", "verify": "5ba6e72139ecdd24",
        "student": "f2f53d00c62022e6", "general": "72393ddf69baf5f5", "finetune": "e9b2b9f633e8daf6",
        "task": "ba174d7ea74f7dad", "eval": "e75ba3178a42caf0"}
