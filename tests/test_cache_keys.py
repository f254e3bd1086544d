"""The caches' keys: a cache is reused exactly when what it holds would be computed again the same
way. The teacher cache's key changes with each input it depends on (the teacher's weight and config
files, the pairs' tokens, the stored layers, the length) and not with anything else; the token
cache's key is a hash of its parts, in any order."""

from __future__ import annotations

import os

import numpy as np
import pytest

from polyglot_distil.data.nli_batches import EncodedPairs
from polyglot_distil.data import token_cache
from polyglot_distil.distill import teacher_cache
from polyglot_distil.fingerprints import teacher_cache_key, token_cache_key


def pairs(ids=(5, 6, 7, 8, 9), offsets=(0, 2, 5)) -> EncodedPairs:
    return EncodedPairs(np.asarray(ids, dtype=np.int32), None, np.asarray(offsets, dtype=np.int64), 0)


@pytest.fixture
def teacher(tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * 64)
    (folder / "config.json").write_text('{"hidden_size": 32}')
    return folder


def key(teacher, **change) -> str:
    arguments = {"pairs": pairs(), "hidden": [0, 2], "attention": [1], "max_length": 128, **change}
    return teacher_cache_key(teacher_cache.FORMAT, teacher, arguments["pairs"].input_ids, arguments["pairs"].offsets,
                             arguments["hidden"], arguments["attention"], arguments["max_length"])


def test_the_teacher_cache_key_is_the_same_for_the_same_inputs(teacher):
    first = key(teacher)
    assert len(first) == 32 and int(first, 16) >= 0
    assert key(teacher) == first
    assert key(str(teacher)) == first  # a str path is the same teacher


@pytest.mark.parametrize("change", [
    {"pairs": pairs(ids=(5, 6, 7, 8, 10))},
    {"pairs": pairs(offsets=(0, 3, 5))},
    {"hidden": [0, 3]},
    {"attention": [1, 3]},
    {"max_length": 64},
])
def test_the_teacher_cache_key_changes_with_the_pairs_layers_and_length(teacher, change):
    assert key(teacher, **change) != key(teacher)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_the_teacher_cache_key_changes_when_a_weight_or_config_file_changes(teacher, name):
    before = key(teacher)
    path = teacher / name
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: same size
    touched = key(teacher)
    assert touched != before
    path.write_bytes(path.read_bytes() + b" ")  # grown
    assert key(teacher) not in (before, touched)


def test_a_second_weight_file_changes_the_teacher_cache_key(teacher):
    before = key(teacher)
    (teacher / "model-00002.safetensors").write_bytes(b"x")
    assert key(teacher) != before


def test_other_files_in_the_teachers_folder_leave_the_key_alone(teacher):
    before = key(teacher)
    (teacher / "README.md").write_text("notes")
    (teacher / "training_args.bin").write_bytes(b"args")
    assert key(teacher) == before


def test_the_token_cache_key_is_a_hash_of_its_parts_in_any_order():
    parts = {"tokenizer": "abc", "block_size": 256, "languages": ["en", "fr"]}
    value = token_cache_key(token_cache.FORMAT, parts)
    assert len(value) == 20 and int(value, 16) >= 0
    assert token_cache_key(token_cache.FORMAT, dict(reversed(list(parts.items())))) == value
    assert token_cache_key(token_cache.FORMAT, {**parts, "block_size": 128}) != value
    assert token_cache_key(token_cache.FORMAT, {**parts, "languages": ["fr", "en"]}) != value


def test_a_runs_config_hash_is_the_same_in_any_key_order_and_changes_with_a_value():
    from polyglot_distil.fingerprints import run_config_hash as config_hash

    config = {"lr": 1e-4, "steps": 10, "teacher": {"path": "t", "layers": [0, 2]}}
    value = config_hash(config)
    assert len(value) == 16 and int(value, 16) >= 0
    assert config_hash({"teacher": {"layers": [0, 2], "path": "t"}, "steps": 10, "lr": 1e-4}) == value
    assert config_hash({**config, "steps": 11}) != value
    assert config_hash({**config, "teacher": {"path": "t", "layers": [2, 0]}}) != value


def test_a_pipeline_stages_argv_hash_tells_apart_the_words_and_their_order():
    from polyglot_distil.fingerprints import argv_hash as _argv_hash

    value = _argv_hash(["trim", "--out", "a b"])
    assert len(value) == 16 and int(value, 16) >= 0 and _argv_hash(["trim", "--out", "a b"]) == value
    assert len({value, _argv_hash(["trim", "--out", "a", "b"]), _argv_hash(["trim", "a b", "--out"])}) == 3


def test_the_tokenizer_fingerprint_changes_with_each_token_its_id_and_the_model_type():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from polyglot_distil.fingerprints import tokenizer_fingerprint as fingerprint
    from polyglot_distil.models.loading import vocab_in_id_order

    def tokenizer_fingerprint(tokenizer, vocab=None):
        return fingerprint(tokenizer, vocab_in_id_order(tokenizer) if vocab is None else vocab)

    def tokenizer(tokens, model=models.WordPiece, added=()):
        vocab = {t: i for i, t in enumerate(tokens)}
        backend = Tokenizer(model(vocab, unk_token="[UNK]") if model is models.WordPiece else model(vocab, []))
        backend.add_special_tokens(list(added))
        return PreTrainedTokenizerFast(tokenizer_object=backend)

    tokens = ["[UNK]", "ab", "c", "é"]
    value = tokenizer_fingerprint(tokenizer(tokens))
    assert len(value) == 64 and int(value, 16) >= 0 and tokenizer_fingerprint(tokenizer(tokens)) == value
    given = tokenizer(tokens)
    assert tokenizer_fingerprint(given, vocab_in_id_order(given)) == value  # the vocabulary passed, as count does
    others = [tokenizer(["[UNK]", "a", "bc", "é"]),  # the same characters split otherwise
              tokenizer(["[UNK]", "c", "ab", "é"]),  # the same tokens under other ids
              tokenizer(["[UNK]", "ab", "c", "e"]),  # another token
              tokenizer(tokens, added=["<x>"]),  # an added token
              tokenizer(tokens, model=models.BPE)]  # the same vocabulary, another model
    assert len({value, *(tokenizer_fingerprint(o) for o in others)}) == 6
