"""`vocab/trim_model.py` on models built from configuration classes (vocabulary 40, no tokenizer,
milliseconds each): every vocabulary-indexed tensor is re-indexed along its token axis and nothing
else changes, ties, `padding_idx`, `num_embeddings` / `in_features` / `out_features`, the
configuration's sizes and special ids (the generation config's too) follow, the parameter counts
are exact, and what trim must refuse is refused before anything changes. The whole-command trims
of tests/test_trim.py and test_trim_families.py prove the same end to end; these are the fast unit
tests docs/mutation.md runs each mutant against."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as t  # the model classes below imported once, at collection (mutation runs fork after it)
from transformers.models.bert import modeling_bert  # noqa: F401
from transformers.models.mbart import modeling_mbart  # noqa: F401
from transformers.models.mobilebert import modeling_mobilebert  # noqa: F401
from transformers.models.mt5 import modeling_mt5  # noqa: F401
from transformers.models.xlm_roberta import modeling_xlm_roberta  # noqa: F401

from polyglot_distil.errors import UserError
from polyglot_distil.vocab.trim_model import other_vocab_axis, remap_special_ids, trim_model_vocab, vocab_tensors

V = 40
KEPT = np.array([0, 1, 2, 3, 5, 8, 13, 21, 34, 39], dtype=np.int64)  # every special below kept, renumbered


def randomised(model, seed: int = 0):
    """Every parameter and float buffer drawn at random (a zero bias re-indexed or truncated looks
    the same)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model.eval()


def tiny_bert(**config):
    return randomised(t.BertForMaskedLM(t.BertConfig(
        vocab_size=V, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, **config)))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*model.named_parameters(remove_duplicate=False),
                                                      *model.named_buffers(remove_duplicate=False)]}


def assert_reindexed(model, before: dict, token_axes: dict[str, int]):
    """The tensors of `token_axes` are the old ones at KEPT along their axis, every other one is as
    it was (same names, nothing added or dropped)."""
    after = snapshot(model)
    assert set(after) == set(before)
    kept = torch.as_tensor(KEPT)
    for name, tensor in after.items():
        if name in token_axes:
            assert torch.equal(tensor, before[name].index_select(token_axes[name], kept)), name
        else:
            assert torch.equal(tensor, before[name]), name


def test_a_tied_bert_keeps_its_rows_its_tie_and_remaps_pad_and_specials():
    model = tiny_bert(pad_token_id=3, bos_token_id=5, eos_token_id=39, sep_token_id=21)
    model.config.cls_token_id, model.config.mask_token_id = 13, 8
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    before = snapshot(model)
    counts = trim_model_vocab(model, KEPT)
    n, hidden = len(KEPT), 8
    assert counts == {"before": V * hidden + V, "after": n * hidden + n}  # tied weight counted once, and the bias
    assert_reindexed(model, before, {"bert.embeddings.word_embeddings.weight": 0,
                                     "cls.predictions.decoder.weight": 0, "cls.predictions.decoder.bias": 0,
                                     "cls.predictions.bias": 0})
    embeddings, decoder = model.get_input_embeddings(), model.get_output_embeddings()
    assert decoder.weight is embeddings.weight and decoder.bias is model.cls.predictions.bias
    assert isinstance(embeddings.weight, torch.nn.Parameter) and not embeddings.weight.requires_grad
    assert model.cls.predictions.bias.requires_grad
    assert embeddings.num_embeddings == n and embeddings.padding_idx == 3
    assert decoder.out_features == n and decoder.in_features == hidden
    config = model.config
    assert (config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id, config.sep_token_id,
            config.cls_token_id, config.mask_token_id) == (n, 3, 4, 9, 7, 6, 5)
    logits = model(input_ids=torch.tensor([[0, 4, 9, 6]])).logits
    assert logits.shape == (1, 4, n)


def test_a_pad_id_that_moves_moves_the_padding_idx():
    model = tiny_bert(pad_token_id=8)
    trim_model_vocab(model, KEPT)
    assert model.get_input_embeddings().padding_idx == 5 and model.config.pad_token_id == 5


def test_an_untied_decoder_is_reindexed_on_its_own_and_stays_untied():
    model = tiny_bert(tie_word_embeddings=False)
    before = snapshot(model)
    counts = trim_model_vocab(model, KEPT)
    assert counts == {"before": 2 * V * 8 + 2 * V, "after": 2 * len(KEPT) * 8 + 2 * len(KEPT)}  # the biases untied too
    assert_reindexed(model, before, {"bert.embeddings.word_embeddings.weight": 0,
                                     "cls.predictions.decoder.weight": 0, "cls.predictions.decoder.bias": 0,
                                     "cls.predictions.bias": 0})
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight


def test_a_model_without_output_embeddings_has_only_its_embedding_trimmed():
    model = randomised(t.BertModel(t.BertConfig(vocab_size=V, hidden_size=8, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=16,
                                                max_position_embeddings=16, pad_token_id=0)))
    before = snapshot(model)
    assert trim_model_vocab(model, KEPT) == {"before": V * 8, "after": len(KEPT) * 8}
    assert_reindexed(model, before, {"embeddings.word_embeddings.weight": 0})


def test_a_roberta_pad_id_that_would_move_is_refused_before_anything_changes():
    model = randomised(t.XLMRobertaForMaskedLM(t.XLMRobertaConfig(
        vocab_size=V, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=24, pad_token_id=1)))
    before = snapshot(model)
    with pytest.raises(UserError) as raised:
        trim_model_vocab(model, KEPT[1:])
    assert str(raised.value) == ("cannot trim: position ids depend on the pad id 1, which would move to 0; "
                                 "keep every token before it")
    assert_reindexed(model, before, {})  # nothing changed
    trim_model_vocab(model, KEPT)  # pad 1 stays 1
    assert model.get_input_embeddings().padding_idx == 1 and model.config.vocab_size == len(KEPT)


def test_an_unknown_vocabulary_sized_tensor_is_refused_naming_it_before_anything_changes():
    model = tiny_bert()
    model.bert.encoder.register_buffer("token_scale", torch.ones(3, V))
    before = snapshot(model)
    with pytest.raises(UserError) as raised:
        trim_model_vocab(model, KEPT)
    assert str(raised.value) == (
        "cannot trim: the model's tensor bert.encoder.token_scale [3, 40] has an axis of the vocabulary's size (40) "
        "that trim does not know to be indexed by token id; nothing was written (please report the model)")
    assert_reindexed(model, before, {})
    assert model.config.vocab_size == V


def test_a_vocabulary_sized_first_axis_of_a_tensor_not_indexed_by_token_id_is_refused_too():
    model = tiny_bert()
    model.bert.embeddings.register_buffer("table", torch.ones(V))
    with pytest.raises(UserError, match=r"bert\.embeddings\.table \[40\]"):
        vocab_tensors(model, V)


def test_a_token_embedding_module_under_a_known_name_is_reindexed_with_the_input_embedding():
    """A second `torch.nn.Embedding` named like a token embedding (`embed_tokens`), as a decoder's
    own, is re-indexed too; one named otherwise with a vocabulary-sized axis is refused."""
    model = tiny_bert()
    model.bert.encoder.embed_tokens = torch.nn.Embedding(V, 4)
    model.bert.encoder.embed_tokens.weight.data.normal_()
    before = snapshot(model)
    trim_model_vocab(model, KEPT)
    assert_reindexed(model, before, {"bert.embeddings.word_embeddings.weight": 0,
                                     "cls.predictions.decoder.weight": 0, "cls.predictions.decoder.bias": 0,
                                     "cls.predictions.bias": 0, "bert.encoder.embed_tokens.weight": 0})
    assert model.bert.encoder.embed_tokens.num_embeddings == len(KEPT)
    other = tiny_bert()
    other.bert.encoder.lookup = torch.nn.Embedding(V, 4)
    with pytest.raises(UserError, match=r"bert\.encoder\.lookup\.weight \[40, 4\]"):
        vocab_tensors(other, V)


def test_mobilebert_head_dense_loses_input_features_along_its_second_axis():
    model = randomised(t.MobileBertForMaskedLM(t.MobileBertConfig(
        vocab_size=V, hidden_size=16, embedding_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, intra_bottleneck_size=8, true_hidden_size=8, num_feedforward_networks=1,
        max_position_embeddings=16, pad_token_id=0)))
    before = snapshot(model)
    counts = trim_model_vocab(model, KEPT)
    n = len(KEPT)
    assert counts == {"before": V * 8 + 8 * V + V, "after": n * 8 + 8 * n + n}  # decoder tied, dense, bias
    assert_reindexed(model, before, {"mobilebert.embeddings.word_embeddings.weight": 0,
                                     "cls.predictions.decoder.weight": 0, "cls.predictions.decoder.bias": 0,
                                     "cls.predictions.bias": 0, "cls.predictions.dense.weight": 1})
    assert model.cls.predictions.dense.in_features == n and model.cls.predictions.dense.out_features == 8
    assert model(input_ids=torch.tensor([[0, 4, 9]])).logits.shape == (1, 3, n)


def mbart():
    model = randomised(t.MBartForConditionalGeneration(t.MBartConfig(
        vocab_size=V, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=16,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)))
    model.generation_config.forced_bos_token_id = 34
    model.generation_config.eos_token_id = [2, 39]
    model.generation_config.decoder_start_token_id = 2
    return model


def test_mbart_final_logits_bias_and_the_generation_config_follow():
    model = mbart()
    before = snapshot(model)
    counts = trim_model_vocab(model, KEPT)
    n = len(KEPT)
    assert counts == {"before": V * 8, "after": n * 8}  # one shared embedding; final_logits_bias is a buffer
    shared = ["model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
              "lm_head.weight"]
    assert_reindexed(model, before, {**{name: 0 for name in shared}, "final_logits_bias": 1})
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.lm_head.out_features == n
    generation = model.generation_config
    assert (generation.forced_bos_token_id, generation.eos_token_id, generation.decoder_start_token_id) == (8, [2, 9], 2)
    assert (model.config.vocab_size, model.config.pad_token_id, model.config.forced_eos_token_id) == (n, 1, 2)


def test_vocab_tensors_names_each_token_axis_once():
    model = mbart()
    names = {id(tensor): name for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    found = vocab_tensors(model, V)
    assert sorted((names[id(tensor)], axis) for tensor, axis in found) == [("final_logits_bias", 1),
                                                                          ("model.shared.weight", 0)]
    assert vocab_tensors(model, 41) == []  # no axis of that size


def test_t5_untied_lm_head_and_a_composite_config_follow():
    model = randomised(t.MT5ForConditionalGeneration(t.MT5Config(
        vocab_size=V, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)))
    model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 8))
    model.config.text_config = t.BertConfig(vocab_size=7)  # another size: left alone
    model.config.decoder = t.BertConfig(vocab_size=V)
    before = snapshot(model)
    counts = trim_model_vocab(model, KEPT)
    n = len(KEPT)
    assert counts == {"before": 2 * V * 8, "after": 2 * n * 8}
    assert_reindexed(model, before, {"shared.weight": 0, "encoder.embed_tokens.weight": 0,
                                     "decoder.embed_tokens.weight": 0, "lm_head.weight": 0})
    assert model.lm_head.weight is not model.shared.weight
    assert (model.config.text_config.vocab_size, model.config.decoder.vocab_size) == (7, n)
    bert = tiny_bert()
    bert.config.text_config = t.BertConfig(vocab_size=V)
    trim_model_vocab(bert, KEPT)
    assert bert.config.text_config.vocab_size == n


def test_a_tie_lost_on_the_way_is_a_bug_raised():
    model = tiny_bert()
    original = model.get_output_embeddings

    class Detached(torch.nn.Module):
        weight = torch.nn.Parameter(torch.zeros(1))

    calls = []

    def output_embeddings():
        calls.append(1)
        return original() if len(calls) <= 2 else Detached()  # in vocab_tensors, before, then after the trim

    model.get_output_embeddings = output_embeddings
    with pytest.raises(RuntimeError, match="^the output decoder lost its tie to the input embedding$"):
        trim_model_vocab(model, KEPT)


def test_remap_special_ids_maps_ids_in_range_and_leaves_the_rest():
    from types import SimpleNamespace

    id_map = np.array([0, -1, 1, 2])
    config = SimpleNamespace(pad_token_id=0, bos_token_id=2, eos_token_id=[3, 2], sep_token_id=4, cls_token_id=-1,
                             unk_token_id=None, mask_token_id=[3, 9], decoder_start_token_id=3,
                             forced_bos_token_id="2", forced_eos_token_id=[2, "3"])
    remap_special_ids(config, id_map)
    assert vars(config) == dict(pad_token_id=0, bos_token_id=1, eos_token_id=[2, 1], sep_token_id=4, cls_token_id=-1,
                                unk_token_id=None, mask_token_id=[3, 9], decoder_start_token_id=2,
                                forced_bos_token_id="2", forced_eos_token_id=[2, "3"])
    assert type(config.bos_token_id) is int and all(type(i) is int for i in config.eos_token_id)
    lists = SimpleNamespace(eos_token_id=[0, 3], pad_token_id=[1, 4])  # 4: one past the map, left alone
    remap_special_ids(lists, id_map)
    assert (lists.eos_token_id, lists.pad_token_id) == ([0, 2], [1, 4])
    dropped = SimpleNamespace(pad_token_id=0, eos_token_id=[0])  # id 0 not kept: -1, not another token's id
    remap_special_ids(dropped, np.array([-1, 0, 1]))
    assert (dropped.pad_token_id, dropped.eos_token_id) == (-1, [-1])


@pytest.mark.parametrize("name, axis", [
    ("final_logits_bias", 1), ("model.final_logits_bias", 1), ("cls.predictions.dense.weight", 1),
    ("mobilebert.cls.predictions.dense.weight", 1), ("xfinal_logits_bias", None), ("final_logits_bias.x", None),
    ("cls.predictions.dense.bias", None), ("bert.embeddings.word_embeddings.weight", None)])
def test_other_vocab_axis_matches_whole_name_parts(name, axis):
    assert other_vocab_axis(name) == axis


class _Custom(torch.nn.Module):
    """A model of no known family: its token table has a name trim does not know, its output
    embeddings are the same table (an `Embedding`, with no `bias` attribute at all), or a module
    outside the model."""

    def __init__(self, output: str = "tied"):
        from types import SimpleNamespace

        super().__init__()
        self.table = torch.nn.Embedding(V, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.config = SimpleNamespace(vocab_size=V, pad_token_id=8)
        self.output = [{"tied": self.table, "none": None, "foreign": torch.nn.Linear(4, V)}[output]]  # not a submodule

    @property
    def base_model(self):
        return self

    def get_input_embeddings(self):
        return self.table

    def get_output_embeddings(self):
        return self.output[0]


def test_the_input_embedding_is_found_whatever_its_name_and_an_output_table_without_bias_is_fine():
    model = randomised(_Custom())
    before = snapshot(model)
    assert trim_model_vocab(model, KEPT) == {"before": V * 4, "after": len(KEPT) * 4}
    assert_reindexed(model, before, {"table.weight": 0})
    assert model.table.num_embeddings == len(KEPT) and model.config.vocab_size == len(KEPT)
    assert model.config.pad_token_id == 5
    untied = randomised(_Custom("none"))
    before = snapshot(untied)
    trim_model_vocab(untied, KEPT)
    assert_reindexed(untied, before, {"table.weight": 0})


def test_an_output_embedding_outside_the_model_is_a_bug_raised():
    with pytest.raises(ValueError, match="^module not found in model$"):
        trim_model_vocab(_Custom("foreign"), KEPT)


def test_a_vocabulary_sized_tensor_of_the_model_itself_is_named_without_a_prefix():
    model = tiny_bert()
    model.register_buffer("token_table", torch.ones(2, V))
    with pytest.raises(UserError, match=r"the model's tensor token_table \[2, 40\] has"):
        vocab_tensors(model, V)


def test_a_one_dimensional_tensor_named_like_a_second_axis_one_is_refused_not_a_crash():
    """`final_logits_bias` [V] (not [1, V]) has no second axis to index: refused by name."""
    model = tiny_bert()
    model.register_buffer("final_logits_bias", torch.ones(V))
    with pytest.raises(UserError, match=r"the model's tensor final_logits_bias \[40\] has"):
        trim_model_vocab(model, KEPT)
