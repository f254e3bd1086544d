"""`apply-diff` (distill/diff.py) on a tiny BERT built from its configuration (vocabulary 40,
hidden 8, one layer; no training, under a second each): a diff rebuilds the trained classifier bit
for bit, in the dtype it was saved in, and every way a diff and a base can disagree is one line
naming it, with no output. The diffs are written here by hand in the documented layout, so that a
mistake in `write_diff` and the same mistake in `apply_diff` cannot cancel out; tests/test_sparse.py
checks the round trip through a real sparse training run. Also `write_diff`'s choice of the index
dtype at 2^31 entries, with a mask that reports that size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as t  # imported at collection: mutation runs fork after it
from safetensors.torch import load_file, save_file
from transformers.models.bert import modeling_bert  # noqa: F401

from conftest import run_cli
from polyglot_distil.distill.diff import DIFF_FILE, FORMAT, INFO_FILE, apply_diff, model_card, write_diff
from polyglot_distil.fingerprints import body_fingerprint
from polyglot_distil.errors import UserError
from polyglot_distil.models.classifier import new_classifier


def tiny_bert(folder: Path, vocab_size: int = 40, seed: int = 0) -> Path:
    """A random BertForMaskedLM saved in `folder`, with stand-in tokenizer files (apply-diff copies
    them, it does not read them)."""
    config = t.BertConfig(vocab_size=vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, max_position_embeddings=16)
    torch.manual_seed(seed)
    t.BertForMaskedLM(config).save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"stand-in": true}\n')
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return folder


class Diff:
    """A diff folder for `base` and the dense classifier it must rebuild (`expected`, a state dict
    in the saved dtype)."""

    def __init__(self, root: Path, base: Path, dtype: torch.dtype = torch.float32):
        self.base, self.folder = base, root / "diff"
        self.folder.mkdir()
        model, new_names = new_classifier(str(base), 0)
        model.config.dtype = str(dtype).removeprefix("torch.")
        model.config.to_json_file(self.folder / "config.json")
        head = sorted(new_names)  # the classifier and BERT's pooler, new on a masked-LM checkpoint
        weights = dict(model.named_parameters())
        body = [n for n in weights if n not in head]
        self.record = {"format": FORMAT, "base": str(base), "base_fingerprint": body_fingerprint(weights, body),
                       "k": 5, "head": head, "body": ["bert.embeddings.word_embeddings.weight",
                                                      "bert.encoder.layer.0.output.dense.bias"]}
        # trained: entries 3, 17 and 300 of the embedding, 6 and 0 of a bias; the whole head
        chosen = {"bert.embeddings.word_embeddings.weight": [3, 17, 300], "bert.encoder.layer.0.output.dense.bias": [6, 0]}
        self.tensors = {}
        generator = torch.Generator().manual_seed(1)
        trained = {n: p.detach().clone() for n, p in weights.items()}
        for name, indices in chosen.items():
            values = torch.randn(len(indices), generator=generator).to(dtype)
            trained[name].view(-1)[indices] = values.float()
            self.tensors[f"body.{name}.indices"] = torch.tensor(indices, dtype=torch.int32)
            self.tensors[f"body.{name}.values"] = values
        for name in head:
            trained[name] = torch.randn(trained[name].shape, generator=generator).to(dtype).float()
            self.tensors[f"head.{name}"] = trained[name].to(dtype)
        self.expected = {n: v.to(dtype) for n, v in trained.items()}
        self.write()

    def write(self) -> None:
        save_file(self.tensors, self.folder / DIFF_FILE, metadata={"format": "pt"})
        (self.folder / INFO_FILE).write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("student") / "student")


def assert_rebuilds(model, diff: Diff, dtype: torch.dtype):
    state = dict(model.named_parameters())
    assert state.keys() == diff.expected.keys()
    for name, tensor in diff.expected.items():
        assert state[name].dtype == dtype and torch.equal(state[name], tensor), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_diff_rebuilds_the_trained_classifier_bit_for_bit_in_its_saved_dtype(tmp_path, base, dtype):
    diff = Diff(tmp_path, base, dtype)
    model, record = apply_diff(str(base), diff.folder)
    assert record == diff.record
    assert_rebuilds(model, diff, dtype)
    # indices stored as int64 (a tensor of 2^31 entries or more) apply the same
    for name in diff.record["body"]:
        diff.tensors[f"body.{name}.indices"] = diff.tensors[f"body.{name}.indices"].long()
    diff.write()
    assert_rebuilds(apply_diff(str(base), diff.folder)[0], diff, dtype)


def test_a_body_tensor_without_entries_is_left_as_the_base_has_it(tmp_path, base):
    diff = Diff(tmp_path, base)
    name = "bert.encoder.layer.0.output.dense.bias"
    diff.tensors[f"body.{name}.indices"] = torch.zeros(0, dtype=torch.int32)
    diff.tensors[f"body.{name}.values"] = torch.zeros(0)
    diff.write()
    model, _ = apply_diff(str(base), diff.folder)
    student = t.BertModel.from_pretrained(base, add_pooling_layer=False)
    assert torch.equal(dict(model.named_parameters())[name], student.encoder.layer[0].output.dense.bias)


def with_record(diff: Diff, **changes) -> Path:
    """The diff's folder, its sparse_diff.json rewritten with `changes` (None: the key removed)."""
    for key, value in changes.items():
        if value is None:
            del diff.record[key]
        else:
            diff.record[key] = value
    diff.write()
    return diff.folder


def refused(base, folder) -> str:
    with pytest.raises(UserError) as raised:
        apply_diff(str(base), folder)
    return str(raised.value)


def test_a_folder_without_either_file_is_not_a_diff(tmp_path, base):
    diff = Diff(tmp_path, base)
    message = (f"--diff {diff.folder}: not a sparse diff folder (expected {INFO_FILE} and {DIFF_FILE}, as "
               "'distil task' writes in OUT/sparse_diff)")
    for name in (INFO_FILE, DIFF_FILE):
        shutil.move(diff.folder / name, tmp_path / name)
        assert refused(base, diff.folder) == message
        shutil.move(tmp_path / name, diff.folder / name)
    assert apply_diff(str(base), diff.folder)


def test_another_format_is_named(tmp_path, base):
    diff = Diff(tmp_path, base)
    assert refused(base, with_record(diff, format="polyglot-distil sparse diff 2")) == (
        f"--diff {diff.folder}: unknown format 'polyglot-distil sparse diff 2' (expected {FORMAT!r})")
    assert refused(base, with_record(diff, format=None)).startswith(f"--diff {diff.folder}: unknown format None ")


def test_a_base_of_another_size_or_other_weights_is_refused(tmp_path, base):
    diff = Diff(tmp_path, base)
    other = tiny_bert(tmp_path / "other-vocab", vocab_size=41)
    assert refused(other, diff.folder) == (
        f"--student {other} does not fit the diff in {diff.folder} (its tensors have other shapes: another vocabulary "
        "or size); pass the phase-1 student that 'distil task' was given as --student")
    retrained = tiny_bert(tmp_path / "retrained", seed=1)
    assert refused(retrained, diff.folder) == (
        f"--student {retrained} is not the model this diff was trained from (its weights differ); pass the phase-1 "
        f"student given to 'distil task' ({base})")
    assert refused(retrained, with_record(diff, base=None)).endswith(f"given to 'distil task' (see {INFO_FILE})")


def test_a_base_that_lacks_weights_the_diff_does_not_carry_is_refused(tmp_path, base):
    diff = Diff(tmp_path, base)
    # the pooler and the classifier are new on this base: the first 3 of 4 named
    assert refused(base, with_record(diff, head=[])) == (
        f"--student {base} lacks weights the diff does not carry (bert.pooler.dense.bias, bert.pooler.dense.weight, "
        "classifier.bias); pass the phase-1 student that 'distil task' was given as --student")


def test_a_damaged_or_mismatched_diff_file_is_named(tmp_path, base):
    diff = Diff(tmp_path, base)
    data = (diff.folder / DIFF_FILE).read_bytes()
    (diff.folder / DIFF_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(Exception) as cause:
        load_file(diff.folder / DIFF_FILE)
    first = str(cause.value).strip().splitlines()[0]
    assert refused(base, diff.folder) == (
        f"--diff {diff.folder / DIFF_FILE} cannot be read ({first}): the file is damaged or cut short; copy it "
        "again from the 'distil task' run (OUT/sparse_diff)")
    diff.record["body"].append("bert.pooler.dense.weight")
    diff.write()
    assert refused(base, diff.folder) == (
        f"--diff {diff.folder / DIFF_FILE} lacks body.bert.pooler.dense.weight.indices, which {INFO_FILE} lists: the "
        "two files do not belong together; copy the whole sparse_diff folder again")


def test_a_read_error_without_a_message_is_named_by_its_type(tmp_path, base, monkeypatch):
    import safetensors.torch

    def failing(path):
        raise OSError()

    diff = Diff(tmp_path, base)
    monkeypatch.setattr(safetensors.torch, "load_file", failing)
    assert refused(base, diff.folder).startswith(f"--diff {diff.folder / DIFF_FILE} cannot be read (OSError): ")


def test_a_head_tensor_of_another_shape_is_named(tmp_path, base):
    diff = Diff(tmp_path, base)
    diff.tensors["head.classifier.bias"] = torch.zeros(4)
    diff.write()
    assert refused(base, diff.folder) == (
        f"--diff {diff.folder}: head tensor classifier.bias has shape (4,), the model built from --student {base} (3,); "
        "pass the phase-1 student that 'distil task' was given as --student")


def test_an_index_beyond_the_base_tensor_is_named(tmp_path, base):
    diff = Diff(tmp_path, base)
    name = "bert.encoder.layer.0.output.dense.bias"  # 8 entries
    for index, accepted in ((7, True), (8, False), (1234, False)):
        diff.tensors[f"body.{name}.indices"] = torch.tensor([0, index], dtype=torch.int32)
        diff.write()
        if accepted:
            assert apply_diff(str(base), diff.folder)
        else:
            assert refused(base, diff.folder) == (
                f"--diff {diff.folder}: {name} has entries beyond the --student model's tensor (index {index:,} of 8); "
                "pass the phase-1 student that 'distil task' was given as --student")


def test_the_command_writes_the_dense_model_its_tokenizer_and_card(tmp_path, base, capsys):
    diff = Diff(tmp_path, base, torch.bfloat16)
    out = tmp_path / "dense"
    assert run_cli("apply-diff", "--student", base, "--diff", diff.folder, "--out", out) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied 5 body entries and 4 head tensors to {base}",
                                                    f"wrote {out}"]
    model = t.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.bfloat16)
    assert_rebuilds(model, diff, torch.bfloat16)
    assert load_file(out / "model.safetensors")["classifier.bias"].dtype == torch.bfloat16
    assert (out / "tokenizer.json").read_text() == '{"stand-in": true}\n'
    assert (out / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    assert (out / "README.md").read_text(encoding="utf-8") == model_card(str(base), str(diff.folder), diff.record)
    assert "`" + str(base) + "`" in (out / "README.md").read_text(encoding="utf-8")
    # an existing output is kept without --overwrite, replaced with it
    (out / "marker").write_text("old")
    assert run_cli("apply-diff", "--student", base, "--diff", diff.folder, "--out", out) == 2
    assert "already exists" in capsys.readouterr().err and (out / "marker").exists()
    assert run_cli("apply-diff", "--student", base, "--diff", diff.folder, "--out", out, "--overwrite") == 0
    assert not (out / "marker").exists() and (out / "model.safetensors").is_file()


def test_a_refused_diff_writes_nothing(tmp_path, base, capsys):
    diff = Diff(tmp_path, base)
    assert run_cli("apply-diff", "--student", base, "--diff", with_record(diff, format="other"), "--out", tmp_path / "dense") == 2
    assert "unknown format 'other'" in capsys.readouterr().err and not (tmp_path / "dense").exists()


def test_trust_remote_code_reaches_the_loading_only_when_asked(tmp_path, base, monkeypatch):
    """No remote code unless asked (and asked for, it is passed on); the seed of the new head
    does not matter, the diff overwrites every new parameter."""
    import polyglot_distil.distill.diff as diff_module

    calls = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return new_classifier(*args, **kwargs)

    monkeypatch.setattr(diff_module, "new_classifier", recording)
    diff = Diff(tmp_path, base)
    for asked in (None, False, True):
        model, _ = apply_diff(str(base), diff.folder) if asked is None else \
            apply_diff(str(base), diff.folder, trust_remote_code=asked)
        (given_base, _, trust), kwargs = calls[-1]
        assert given_base == str(base) and trust is bool(asked) and kwargs["dtype"] == torch.float32
        assert_rebuilds(model, diff, torch.float32)
    for option, asked in (((), False), (("--trust-remote-code",), True)):  # the command passes it on
        assert run_cli("apply-diff", "--student", base, "--diff", diff.folder, "--out", tmp_path / f"out-{asked}",
                       *option) == 0
        assert calls[-1][0][2] is asked


# ---------------------------------------------------------------------------------------------
# write_diff's index dtype at 2^31 entries


class _Sized(torch.Tensor):
    """A mask that reports `size` entries (torch's own kernels see the real, tiny tensor)."""

    size = 0

    def numel(self):
        return self.size


@pytest.mark.parametrize("entries, dtype", [(2**31 - 1, torch.int32), (2**31, torch.int64), (2**32, torch.int64)])
def test_write_diff_stores_indices_as_int64_from_2_to_the_31_entries_on(tmp_path, entries, dtype):
    """int32 indices wrap past 2^31 - 1: a tensor of 2^31 entries or more needs int64."""
    from types import SimpleNamespace

    mask = torch.tensor([False, True, False, True]).as_subclass(_Sized)
    mask.size = entries
    theta0 = torch.zeros(4)
    trained = torch.tensor([0.0, 1.5, 0.0, -2.0])
    ticket = SimpleNamespace(groups=SimpleNamespace(selectable=["w"], head=[], frozen=[]), mask={"w": mask},
                             theta0={"w": theta0}, k=2)
    (tmp_path / "config.json").write_text("{}")
    write_diff(tmp_path, {"w": trained}, ticket, tmp_path / "config.json", {})
    tensors = load_file(tmp_path / DIFF_FILE)
    assert tensors["body.w.indices"].dtype == dtype and tensors["body.w.indices"].tolist() == [1, 3]
    assert tensors["body.w.values"].tolist() == [1.5, -2.0]
