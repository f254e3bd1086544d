"""The fingerprints of a run's inputs (`fingerprints.py`, formerly `inputs.py`), which a resumed run compares to notice a teacher,
a student or a corpus that changed under the same path: a missed change resumes on other inputs
without a word. Files of a few bytes, a sparse 16 MiB one; milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polyglot_distil.fingerprints import changed_inputs, file_fingerprint, input_fingerprints, path_fingerprint

TIME = 1_700_000_000_000_000_000


def write(path: Path, content: bytes | str, mtime_ns: int = TIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def sha256(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def test_a_small_file_is_fingerprinted_by_size_time_and_content(tmp_path):
    path = write(tmp_path / "config.json", b'{"a": 1}')
    assert file_fingerprint(path) == {"size": 8, "mtime_ns": TIME, "sha256": sha256(b'{"a": 1}')}


def test_files_up_to_16_mib_are_hashed_and_larger_ones_are_not(tmp_path):
    for size, hashed in ((16 << 20, True), ((16 << 20) + 1, False)):
        path = tmp_path / f"{size}.bin"
        with open(path, "wb") as handle:
            handle.truncate(size)  # sparse: no 16 MiB written
        record = file_fingerprint(path)
        assert record["size"] == size and ("sha256" in record) == hashed
        if hashed:
            assert record["sha256"] == sha256(bytes(size))


def model_folder(root: Path) -> Path:
    folder = root / "model"
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "spiece.model",
                 "kept_ids.npy"):
        write(folder / name, name)
    write(folder / "README.md", "card")
    write(folder / ".config.json", "hidden")
    write(folder / "training.log", "log")
    write(folder / "checkpoints" / "config.json", "a checkpoint")
    return folder


def test_a_model_folder_is_fingerprinted_by_its_configs_tokenizer_files_and_weights_in_name_order(tmp_path):
    folder = model_folder(tmp_path)
    found = path_fingerprint(folder)
    names = ["config.json", "kept_ids.npy", "model.safetensors", "pytorch_model.bin", "spiece.model", "vocab.txt"]
    assert list(found) == names  # not the card, a hidden file, a log or a subfolder
    assert found["vocab.txt"] == file_fingerprint(folder / "vocab.txt")
    assert path_fingerprint(folder / "vocab.txt") == file_fingerprint(folder / "vocab.txt")


def test_every_existing_local_path_in_a_run_config_is_fingerprinted_but_the_runs_own_folder(tmp_path, monkeypatch):
    model = model_folder(tmp_path)
    train = write(tmp_path / "train.tsv", "a\tb\tentailment\n")
    corpus = write(tmp_path / "en.txt", "text\n")
    dev = write(tmp_path / "dev.tsv", "a\tb\tneutral\n")
    out = tmp_path / "run"
    write(out / "config.json", "{}")
    sibling = write(tmp_path / "run2" / "x.txt", "x")  # the run's folder's name is its prefix
    write(tmp_path / "hf:xnli", "a file named like a hub source")
    monkeypatch.chdir(tmp_path)
    config = {"teacher": str(model), "lang": [f"en={corpus}", str(corpus)], "out": str(out), "hub": "hf:xnli",
              "dev": f"{dev}?columns=premise?hypothesis",  # the options after the first "?"
              "task": {"train": (f"{train}?columns=premise,hypothesis,label", "hf:xnli?split=train"),
                       "inside": str(out / "config.json"), "other": str(sibling), "missing": str(tmp_path / "no"),
                       "steps": 10, "none": None, "empty": "", "path": tmp_path / "en.txt"}}
    found = input_fingerprints(config, skip=[str(out)])
    assert found == {str(model): path_fingerprint(model), str(corpus): file_fingerprint(corpus),
                     str(train): file_fingerprint(train), str(sibling): file_fingerprint(sibling),
                     str(dev): file_fingerprint(dev)}
    assert str(out / "config.json") in input_fingerprints(config)  # nothing skipped


def test_the_same_inputs_are_no_change(tmp_path):
    folder = model_folder(tmp_path)
    config = {"teacher": str(folder), "data": str(folder / "vocab.txt")}
    assert changed_inputs(input_fingerprints(config), input_fingerprints(config)) == []


def test_a_copy_with_new_times_and_the_same_content_is_no_change_and_new_content_is(tmp_path):
    path = write(tmp_path / "config.json", b"abc")
    saved = input_fingerprints({"p": str(path)})
    write(path, b"abc", TIME + 1)
    assert changed_inputs(saved, input_fingerprints({"p": str(path)})) == []
    write(path, b"abd", TIME + 2)
    assert changed_inputs(saved, input_fingerprints({"p": str(path)})) == [f"{path} changed content"]


def test_a_file_of_the_same_size_and_time_is_taken_as_unchanged():
    old = {"f": {"size": 3, "mtime_ns": TIME, "sha256": "a"}}
    assert changed_inputs(old, {"f": {"size": 3, "mtime_ns": TIME, "sha256": "b"}}) == []


def test_each_kind_of_file_change_is_one_phrase():
    old = {"size": 1234, "mtime_ns": TIME}
    cases = [({"size": 1235, "mtime_ns": TIME}, "f changed size (1,234 -> 1,235 bytes)"),
             ({"size": 1234, "mtime_ns": TIME + 1}, "f was modified since the run started"),  # too large to hash
             ({"size": 1234, "mtime_ns": TIME + 1, "sha256": "b"}, "f was modified since the run started")]
    for new, phrase in cases:
        assert changed_inputs({"f": old}, {"f": new}) == [phrase]
    hashed = {**old, "sha256": "a"}
    assert changed_inputs({"f": hashed}, {"f": {"size": 1234, "mtime_ns": TIME + 1}}) == [
        "f was modified since the run started"]
    assert changed_inputs({"f": hashed}, {"f": {**hashed, "mtime_ns": TIME + 1}}) == []
    assert changed_inputs({"f": hashed}, {}) == ["f is gone"]


def test_a_file_that_became_a_folder_or_a_folder_that_became_a_file_is_one_phrase(tmp_path):
    path = write(tmp_path / "model", "weights")
    saved = input_fingerprints({"teacher": str(path)})
    path.unlink()
    write(path / "config.json", "{}")
    now = input_fingerprints({"teacher": str(path)})
    assert changed_inputs(saved, now) == [f"{path} is now a folder"]
    assert changed_inputs(now, saved) == [f"{path} is now a file"]  # was a crash (a size of None)
    assert changed_inputs({"m": {}}, {"m": {"size": 0, "mtime_ns": TIME}}) == ["m is now a file"]


def test_a_model_folders_new_gone_and_changed_files_are_named_in_name_order():
    file = {"size": 3, "mtime_ns": TIME, "sha256": "a"}
    old = {"m": {"b.json": file, "c.bin": file, "d.txt": file}, "n": {"x.json": file}}
    now = {"m": {"a.json": file, "b.json": {**file, "size": 4}, "d.txt": file, "e.npy": file}, "n": {"x.json": file}}
    assert changed_inputs(old, now) == ["m/a.json is new", "m/b.json changed size (3 -> 4 bytes)", "m/c.bin is gone",
                                        "m/e.npy is new"]
    assert changed_inputs({"m": {}}, {"m": {}}) == []


def test_a_folder_that_lost_its_files_is_not_a_file():
    assert changed_inputs({"m": {"c.json": {"size": 1, "mtime_ns": TIME}}}, {"m": {}}) == ["m/c.json is gone"]


def test_the_fingerprints_of_a_real_folder_notice_a_touched_weight_and_a_new_file(tmp_path):
    folder = model_folder(tmp_path)
    saved = input_fingerprints({"teacher": str(folder)})
    write(folder / "model.safetensors", "model.safetensors", TIME + 5)  # same bytes: hashed, no change
    write(folder / "tokenizer.json", "{}")
    write(folder / "notes.md", "not an input")
    assert changed_inputs(saved, input_fingerprints({"teacher": str(folder)})) == [f"{folder}/tokenizer.json is new"]


@pytest.mark.parametrize("name", ["vocab.txt", "model.safetensors"])
def test_a_removed_model_file_is_gone(tmp_path, name):
    folder = model_folder(tmp_path)
    saved = input_fingerprints({"teacher": str(folder)})
    (folder / name).unlink()
    assert changed_inputs(saved, input_fingerprints({"teacher": str(folder)})) == [f"{folder}/{name} is gone"]


def test_every_input_that_changed_is_named_not_only_the_first():
    file = {"size": 3, "mtime_ns": TIME, "sha256": "a"}
    saved = {"a": file, "b": file, "c": {"x.json": file}, "d": file, "e": file}
    now = {"b": {"x.json": file}, "c": file, "d": {**file, "size": 4}, "e": {**file, "size": 5}}
    assert changed_inputs(saved, now) == ["a is gone", "b is now a folder", "c is now a file",
                                          "d changed size (3 -> 4 bytes)", "e changed size (3 -> 5 bytes)"]
