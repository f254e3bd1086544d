"""`trim` on model families whose vocabulary-indexed tensors go beyond an embedding and a tied
decoder: sequence-to-sequence models (mT5: untied `lm_head`, `decoder_start_token_id`; mBART-50:
shared embeddings, `final_logits_bias` [1, V] indexed along its second axis, language codes, a
generation config with `forced_bos_token_id`) and MobileBERT (its head's `dense` [H - E, V]).
Each trimmed folder loads back with no size mismatch, its tensors are the source's at the kept
token ids along their token axis, the built-in verify compares the encoder's and decoder's hidden
states and logits (teacher forcing) bitwise and the greedy generations; a tensor with a
vocabulary-sized axis that trim cannot place is an error naming it, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, saved_weights
from vocab_models import MBART_LANG_CODES, mbart_tokenizer, mt5_tokenizer, save_seq2seq_tokenizer, swahili, \
    tiny_mobilebert, tiny_seq2seq, training_lines, trim_to_swahili

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FamilyTrim:
    def __init__(self, source: Path, out: Path, report: dict):
        self.source, self.out, self.report = source, out, report
        self.old_ids = torch.tensor(report["old_ids"])


def family_trim(root: Path, source: Path) -> FamilyTrim:
    return FamilyTrim(source, root / "trimmed", trim_to_swahili(root, source, verify_lines=40))


@pytest.fixture(scope="module")
def unigram_lines() -> list[str]:
    return training_lines(300)


def seq2seq_trim(root: Path, kind: str, lines: list[str]) -> FamilyTrim:
    tokenizer = mt5_tokenizer(lines) if kind == "mt5" else mbart_tokenizer(lines)
    save_seq2seq_tokenizer(tokenizer, root / "source", kind)
    tiny_seq2seq(kind, tokenizer, root / "source")
    return family_trim(root, root / "source")


@pytest.fixture(scope="module")
def mt5(tmp_path_factory, unigram_lines) -> FamilyTrim:
    return seq2seq_trim(tmp_path_factory.mktemp("mt5"), "mt5", unigram_lines)


@pytest.fixture(scope="module")
def mbart(tmp_path_factory, unigram_lines) -> FamilyTrim:
    return seq2seq_trim(tmp_path_factory.mktemp("mbart"), "mbart", unigram_lines)


@pytest.fixture(params=["mt5", "mbart"])
def seq2seq(request) -> FamilyTrim:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def mobilebert(tmp_path_factory, tiny_bert_dir) -> FamilyTrim:
    root = tmp_path_factory.mktemp("mobilebert")
    (root / "source").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(tiny_bert_dir / name, root / "source" / name)
    tiny_mobilebert(len((tiny_bert_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()), root / "source")
    return family_trim(root, root / "source")


def load(folder: Path):
    import transformers

    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    return getattr(transformers, architecture).from_pretrained(folder, attn_implementation="eager",
                                                               output_loading_info=True)


# ---------------------------------------------------------------------------------------------
# Every tensor indexed by token id, along its token axis


def assert_loads_back_with_its_tensors_reindexed(trimmed: FamilyTrim, token_axes: dict[str, int]):
    model, info = load(trimmed.out)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    before, after = saved_weights(trimmed.source), saved_weights(trimmed.out)
    assert set(before) == set(after)
    vocab = len(trimmed.old_ids)
    for name, axis in token_axes.items():
        assert after[name].shape[axis] == vocab
        assert torch.equal(after[name], before[name].index_select(axis, trimmed.old_ids)), name
    for name in set(before) - set(token_axes):  # every other tensor as it was
        assert torch.equal(after[name], before[name]), name
    return model


@pytest.mark.slow
def test_mobilebert_head_dense_is_reindexed_along_its_second_axis(mobilebert):
    token_axes = {"mobilebert.embeddings.word_embeddings.weight": 0, "cls.predictions.bias": 0,
                  "cls.predictions.dense.weight": 1}
    model = assert_loads_back_with_its_tensors_reindexed(mobilebert, token_axes)
    assert model.cls.predictions.dense.weight.shape == (32 - 16, len(mobilebert.old_ids))
    result = mobilebert.report["verify"]["sw"]
    assert result["passed"] and result["compared"] >= 20 and result["max_logit_diff"] == 0


@pytest.mark.slow
def test_mt5_untied_lm_head_and_shared_embeddings_are_reindexed(mt5):
    model = assert_loads_back_with_its_tensors_reindexed(mt5, {"shared.weight": 0, "lm_head.weight": 0})
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # still untied
    assert model.encoder.embed_tokens.weight is model.shared.weight


@pytest.mark.slow
def test_mbart_final_logits_bias_is_reindexed_along_its_second_axis(mbart):
    model = assert_loads_back_with_its_tensors_reindexed(mbart, {"model.shared.weight": 0, "final_logits_bias": 1})
    assert model.lm_head.weight is model.model.shared.weight  # the tie survives


@pytest.mark.slow
def test_mbart_language_codes_stay_contiguous_and_the_generation_config_follows(mbart):
    from polyglot_distil.models.loading import load_tokenizer

    seq2seq = mbart
    tokenizer = load_tokenizer(seq2seq.out)
    codes = tokenizer.convert_tokens_to_ids(MBART_LANG_CODES + ["<mask>"])
    assert codes == list(range(len(tokenizer) - len(codes), len(tokenizer)))  # the last ids, in order
    generation = json.loads((seq2seq.out / "generation_config.json").read_text())
    assert generation["forced_bos_token_id"] == tokenizer.convert_tokens_to_ids("sw_KE")
    old_code = load_tokenizer(seq2seq.source).convert_tokens_to_ids("sw_KE")
    assert seq2seq.report["special_tokens"]["sw_KE"] == [old_code, codes[4]] and old_code != codes[4]


@pytest.mark.slow
def test_seq2seq_verify_compares_encoder_decoder_and_generation(seq2seq):
    result = seq2seq.report["verify"]["sw"]
    assert result["passed"] and result["compared"] >= 30 and result["generated"] == result["compared"]
    assert result["max_hidden_diff"] == 0 and result["max_logit_diff"] == 0
    config = json.loads((seq2seq.out / "config.json").read_text())
    assert config["vocab_size"] == len(seq2seq.old_ids) < seq2seq.report["vocab_size_before"]


@pytest.mark.slow
def test_the_trimmed_seq2seq_model_generates_as_the_source_on_covered_text(seq2seq):
    """Independently of verify, on lines it did not see: greedy generation of 6 tokens, the source restricted to the kept
    tokens, gives the same tokens (renumbered)."""
    from polyglot_distil.models.loading import load_tokenizer

    (before, _), (after, _) = load(seq2seq.source), load(seq2seq.out)
    tokenizer_before, tokenizer_after = load_tokenizer(seq2seq.source), load_tokenizer(seq2seq.out)
    dropped = sorted(set(range(seq2seq.report["vocab_size_before"])) - set(seq2seq.old_ids.tolist()))
    compared = 0
    for text in swahili(5000, 40):
        old = tokenizer_before(text, return_tensors="pt")
        if not np.isin(old["input_ids"][0].numpy(), seq2seq.old_ids.numpy()).all():
            continue
        new = tokenizer_after(text, return_tensors="pt")
        settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1)
        out_before = before.eval().generate(**old, suppress_tokens=dropped, **settings)
        out_after = after.eval().generate(**new, **settings)
        assert seq2seq.old_ids[out_after].tolist() == out_before.tolist(), text
        compared += 1
        if compared == 8:
            break
    assert compared == 8


def test_vocab_tensors_finds_each_token_axis(tmp_path):
    """The tensors trim re-indexes, and along which axis, in MobileBERT and mBART (vocabulary 300,
    no other axis of that size)."""
    import transformers as t

    from polyglot_distil.vocab.trim_model import vocab_tensors

    tiny_mobilebert(300, tmp_path / "mobilebert")
    mobilebert = t.MobileBertForMaskedLM.from_pretrained(tmp_path / "mobilebert")
    mbart = t.MBartForConditionalGeneration(t.MBartConfig(
        vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64))
    for model, expected in (
            (mobilebert, {"mobilebert.embeddings.word_embeddings.weight": 0, "cls.predictions.bias": 0,
                          "cls.predictions.dense.weight": 1}),
            (mbart, {"model.shared.weight": 0, "final_logits_bias": 1})):
        names = {id(tensor): name for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
        assert {names[id(tensor)]: axis for tensor, axis in vocab_tensors(model, 300)} == expected


# ---------------------------------------------------------------------------------------------
# A tensor trim cannot place


def test_an_unknown_vocabulary_sized_tensor_is_an_error_naming_it(tiny_bert_dir):
    from transformers import AutoModelForMaskedLM

    from polyglot_distil.errors import UserError
    from polyglot_distil.vocab.trim_model import trim_model_vocab

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)
    size = model.config.vocab_size
    model.bert.encoder.register_buffer("token_scale", torch.ones(3, size))
    weights_before = model.bert.embeddings.word_embeddings.weight.clone()
    with pytest.raises(UserError, match=r"bert\.encoder\.token_scale \[3, \d+\] has an axis of the vocabulary's size"):
        trim_model_vocab(model, np.arange(0, size, 2))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, weights_before)  # nothing changed
    assert model.config.vocab_size == size


def test_a_checkpoint_tensor_with_a_vocabulary_sized_second_axis_stops_the_trim(tmp_path, tiny_bert_dir, capsys):
    """A tensor the loading class does not know (carried over as is) whose vocabulary axis is not
    its first: one line naming it, and no folder."""
    from safetensors.torch import load_file, save_file

    source = tmp_path / "source"
    shutil.copytree(tiny_bert_dir, source)
    weights = load_file(source / "model.safetensors")
    size = weights["bert.embeddings.word_embeddings.weight"].shape[0]
    weights["cls.extra.token_table"] = torch.zeros(4, size)
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    corpus = tmp_path / "en.txt"
    corpus.write_text("the cat sat on the mat\n" * 5, encoding="utf-8")
    assert run_cli("count", "--model", source, "--lang", f"en={corpus}", "--out", tmp_path / "c.parquet",
                   "--no-progress") == 0
    assert run_cli("trim", "--model", source, "--counts", tmp_path / "c.parquet", "--langs", "en", "--min-count", 1,
                   "--out", tmp_path / "out", "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cls.extra.token_table [4, " in err[0] and "nothing was written" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_verify_command_proves_a_seq2seq_trim_and_the_card_says_what(seq2seq, tmp_path, capsys):
    text = tmp_path / "sw.txt"
    text.write_text("\n".join(swahili(3000, 60)) + "\n", encoding="utf-8")
    assert run_cli("verify", "--original", seq2seq.source, "--trimmed", seq2seq.out, "--lang", f"sw={text}",
                   "--max-lines", 30, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "generated" in out and "identical on every covered text" in out
    card = (seq2seq.out / "README.md").read_text(encoding="utf-8")
    assert "the encoder's and decoder's hidden states (teacher forcing)" in card and "greedy generation" in card
