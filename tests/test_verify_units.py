"""`vocab/verify.py`'s comparison on a tiny BERT, mBART and T5 built from configuration classes around a
hand-made 12-token WordPiece (tests/test_trim_tokenizer.py), trimmed in memory (milliseconds): every
figure of a correct trim is exact, each kind of difference (an embedding row, the MLM bias, the
tokenizer, the pooler, a generation) is found, NaNs and padding cannot hide or fake one, and the
original's decoder is put back. tests/test_verify.py proves the same through the command on a
trained tiny model; these are the fast unit tests docs/mutation.md runs each mutant against."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import transformers as t  # imported at collection: mutation runs fork after it
from transformers.models.bert import modeling_bert  # noqa: F401
from transformers.models.mbart import modeling_mbart  # noqa: F401
from transformers.models.mobilebert import modeling_mobilebert  # noqa: F401

from polyglot_distil.vocab.trim_model import trim_model_vocab
from polyglot_distil.vocab.trim_tokenizer import trim_tokenizer
from polyglot_distil.vocab.verify import LanguageCheck, _KeptRowsDecoder, _padded, _tensor_differences, compare_texts
from test_trim_model import randomised
from test_trim_tokenizer import wordpiece

KEPT = np.array([0, 1, 2, 3, 4, 5, 9, 11])  # of [PAD] [UNK] [CLS] [SEP] a b c ##b ##c ab abc <x>: no c, ##b, ##c, abc
TEXTS = ["ab b", "a b ab", "abc", "q b", "a a a a a a a a"]  # abc: not covered; q: [UNK]; the last: 10 > 8 positions


def bert_config(**extra):
    return t.BertConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=8, pad_token_id=0, **extra)


class Pair:
    """A model and its trim to KEPT, eager attention, float32, eval mode; both tokenizers."""

    def __init__(self, model):
        model.config._attn_implementation = "eager"
        self.original, self.trimmed = model.eval(), copy.deepcopy(model)
        trim_model_vocab(self.trimmed, KEPT)
        self.tokenizer = wordpiece()
        self.trimmed_tokenizer = trim_tokenizer(self.tokenizer, KEPT)

    def compare(self, texts=TEXTS, old_ids=KEPT, **options) -> LanguageCheck:
        return compare_texts(self.original, self.tokenizer, self.trimmed, self.trimmed_tokenizer, old_ids, texts,
                             **options)


@pytest.fixture()
def bert() -> Pair:
    return Pair(randomised(t.BertForMaskedLM(bert_config())))


def test_a_correct_trim_passes_with_every_figure_exact(bert):
    sizes = []
    check = bert.compare(batch_size=2, progress=sizes.append)
    assert check == LanguageCheck(texts=5, covered=4, identical=4, too_long=1, compared=3, differing=0,
                                  tokens_before=16, unk_before=1, tokens_after=16, unk_after=2, max_hidden_diff=0.0,
                                  max_logit_diff=0.0, max_pooler_diff=None, generated=None)
    assert check.passed and sizes == [2, 1]
    assert check.as_dict() == {**vars(check), "covered_share": 0.8, "identical_share": 0.8, "unk_rate_before": 1 / 16,
                               "unk_rate_after": 2 / 16, "passed": True}


def test_an_empty_text_of_a_tokenizer_without_special_tokens_is_compared_not_a_crash(bert):
    for tokenizer in (bert.tokenizer, bert.trimmed_tokenizer):
        tokenizer.backend_tokenizer.post_processor = None  # "" is then no token at all
    check = bert.compare(["", "ab b"])
    assert (check.texts, check.covered, check.identical, check.compared, check.tokens_before) == (2, 2, 2, 2, 2)
    assert check.passed


def test_a_text_of_exactly_the_model_positions_is_compared_and_each_longer_one_counted(bert):
    check = bert.compare(["a a a a a a", "a a a a a a a", "a a a a a a a a"])  # 8, 9 and 10 tokens; 8 positions
    assert (check.covered, check.compared, check.too_long) == (3, 1, 2) and check.passed


def test_nothing_to_compare_gives_zero_shares():
    check = LanguageCheck()
    assert check.as_dict()["covered_share"] == 0.0 and check.as_dict()["unk_rate_after"] == 0.0 and check.passed


def test_a_changed_embedding_row_is_a_difference_in_every_text_using_it(bert):
    with torch.no_grad():
        bert.trimmed.get_input_embeddings().weight[5, 0] += 0.25  # "b", in 3 compared texts
    for batch_size in (1, 8):
        check = bert.compare(batch_size=batch_size)
        assert (check.compared, check.differing, check.passed) == (3, 3, False)
        assert check.max_hidden_diff > 0 and check.max_logit_diff > 0
    only_a = bert.compare(["a a", "ab"])  # without "b" the hidden states agree; the tied decoder's row does not
    assert (only_a.differing, only_a.max_hidden_diff, only_a.passed) == (2, 0.0, False) and only_a.max_logit_diff > 0


def test_a_changed_mlm_bias_is_a_difference_of_the_logits_alone(bert):
    with torch.no_grad():
        bert.trimmed.cls.predictions.bias[7] += 0.5  # "<x>": in no text, in every position's logits
    check = bert.compare()
    assert (check.differing, check.max_hidden_diff, check.passed) == (3, 0.0, False)
    assert math.isclose(check.max_logit_diff, 0.5, rel_tol=1e-5)


def test_a_tokenizer_that_tokenizes_otherwise_is_a_difference_without_running(bert):
    from tokenizers import normalizers

    bert.trimmed_tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    check = bert.compare(["AB b", "a b", "AB"])  # AB: [UNK] before, ab after
    assert (check.covered, check.identical, check.differing, check.compared) == (3, 1, 2, 1)
    assert check.max_hidden_diff == 0.0 and not check.passed


def test_ids_that_do_not_map_through_old_ids_are_a_difference_even_with_the_same_token_strings(bert):
    swapped = KEPT.copy()
    swapped[[4, 5]] = swapped[[5, 4]]  # old_ids that say "a" and "b" were each other
    check = bert.compare(["ab b", "a a"], old_ids=swapped)
    assert (check.identical, check.differing, check.compared) == (0, 2, 0) and not check.passed
    short = bert.compare(["a <x>"], old_ids=KEPT[:-1])  # <x> is trimmed id 7, beyond these old_ids: not a crash
    assert (short.texts, short.covered, short.identical, short.differing) == (1, 0, 0, 0)


def test_a_text_holding_the_token_of_id_0_is_covered(bert):
    check = bert.compare(["[PAD] a"])  # [PAD], id 0 before and after
    assert (check.covered, check.identical, check.compared) == (1, 1, 1) and check.passed


def test_the_pooler_is_compared_when_both_poolers_are_given(bert):
    pooler = randomised(t.BertModel(bert_config()))
    trimmed = copy.deepcopy(pooler)
    trim_model_vocab(trimmed, KEPT)
    check = bert.compare(poolers=(pooler.eval(), trimmed.eval()))
    assert check.max_pooler_diff == 0.0 and check.passed
    with torch.no_grad():
        trimmed.pooler.dense.bias[0] += 0.5
    check = bert.compare(poolers=(pooler, trimmed))
    assert check.max_pooler_diff > 0 and check.max_hidden_diff == 0 and check.differing == 3 and not check.passed


def test_a_model_without_an_mlm_head_has_no_logit_figure():
    pair = Pair(randomised(t.BertModel(bert_config())))
    check = pair.compare()
    assert check.max_logit_diff is None and check.compared == 3 and check.passed
    with torch.no_grad():
        pair.trimmed.get_input_embeddings().weight[5, 0] += 0.25  # "b": the hidden states alone tell
    check = pair.compare()
    assert (check.differing, check.passed) == (3, False) and check.max_hidden_diff > 0


def test_the_original_decoder_is_back_after_comparing_even_after_an_error(bert):
    decoder, bias = bert.original.get_output_embeddings(), bert.original.cls.predictions.bias
    bert.compare()
    assert bert.original.get_output_embeddings() is decoder and bert.original.cls.predictions.bias is bias
    with pytest.raises(RuntimeError):
        with _KeptRowsDecoder(bert.original, KEPT):
            raise RuntimeError("stop")
    assert bert.original.get_output_embeddings() is decoder


def test_the_kept_rows_decoder_is_the_trimmed_decoder_op_on_the_kept_rows(bert):
    decoder = bert.original.get_output_embeddings()
    with _KeptRowsDecoder(bert.original, KEPT) as has_mlm:
        kept = bert.original.get_output_embeddings()
        assert has_mlm and kept is not decoder and isinstance(kept, torch.nn.Linear)
        assert (kept.in_features, kept.out_features) == (8, len(KEPT))
        assert torch.equal(kept.weight, decoder.weight[torch.as_tensor(KEPT)])
        assert torch.equal(kept.bias, decoder.bias[torch.as_tensor(KEPT)])
    plain = t.BertModel(bert_config())
    with _KeptRowsDecoder(plain, KEPT) as has_mlm:
        assert has_mlm is False


def test_a_second_axis_head_tensor_is_swapped_for_its_kept_columns_and_put_back():
    model = randomised(t.MBartForConditionalGeneration(mbart_config()))
    bias = model.final_logits_bias
    with _KeptRowsDecoder(model, KEPT):
        assert torch.equal(model.final_logits_bias, bias[:, torch.as_tensor(KEPT)])
        assert not isinstance(model.final_logits_bias, torch.nn.Parameter)
    assert model.final_logits_bias is bias


def test_mobilebert_head_dense_is_swapped_for_its_kept_columns_inside_its_module():
    model = randomised(t.MobileBertForMaskedLM(t.MobileBertConfig(
        vocab_size=12, hidden_size=16, embedding_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, intra_bottleneck_size=8, true_hidden_size=8, num_feedforward_networks=1,
        max_position_embeddings=8, pad_token_id=0)))
    dense = model.cls.predictions.dense.weight
    with _KeptRowsDecoder(model, KEPT):
        kept = model.cls.predictions.dense.weight
        assert isinstance(kept, torch.nn.Parameter) and torch.equal(kept, dense[:, torch.as_tensor(KEPT)])
    assert model.cls.predictions.dense.weight is dense
    check = Pair(model).compare()
    assert (check.compared, check.max_logit_diff, check.passed) == (3, 0.0, True)


def test_a_one_dimensional_tensor_named_like_a_second_axis_one_is_left_alone():
    model = randomised(t.BertForMaskedLM(bert_config()))
    model.register_buffer("final_logits_bias", torch.zeros(12))  # [V], no second axis: not a head tensor
    with _KeptRowsDecoder(model, KEPT):
        assert model.final_logits_bias.shape == (12,)


def mbart_config():
    return t.MBartConfig(vocab_size=12, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=16,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3)


def test_a_seq2seq_trim_is_compared_teacher_forced_and_by_greedy_generation():
    model = randomised(t.MBartForConditionalGeneration(mbart_config()))
    pair = Pair(model)
    texts = ["ab b", "a b ab", "q b"]
    check = pair.compare(texts, batch_size=2)
    assert (check.compared, check.generated, check.differing, check.max_logit_diff) == (3, 3, 0, 0.0) and check.passed
    with torch.no_grad():
        pair.trimmed.final_logits_bias[0, 4] += 100.0  # "a" generated by the trimmed model only
    check = pair.compare(texts, batch_size=2)
    assert check.differing == 3 and check.generated == 3 and check.max_hidden_diff == 0.0 and not check.passed


def test_padding_is_the_pad_id_after_each_sequence_and_masked():
    ids, mask = _padded([[5, 6, 7], [8]], pad_id=2)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_differences_are_per_text_on_real_positions_and_a_one_sided_nan_is_infinite():
    nan = float("nan")
    before = torch.tensor([[[1.0, nan], [2.0, 3.0]], [[1.0, 1.0], [5.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    after = torch.tensor([[[1.0, nan], [2.0, 3.0]], [[1.0, 1.5], [9.0, 9.0]], [[0.0, nan], [0.0, 0.0]]])
    real = torch.tensor([[True, True], [True, False], [True, True]])[..., None]  # text 1's second position: padding
    differs, gap = _tensor_differences(before, after, real)
    assert differs.tolist() == [False, True, True] and gap == math.inf
    differs, gap = _tensor_differences(before[:2], after[:2], real[:2])
    assert differs.tolist() == [False, True] and gap == 0.5
    differs, gap = _tensor_differences(before[:0], after[:0], real[:0])
    assert differs.tolist() == [] and gap == 0.0


def test_greedy_generations_are_compared_through_old_ids_with_the_dropped_tokens_suppressed():
    from polyglot_distil.vocab.verify import _greedy_differs, _padded

    pair = Pair(randomised(t.MBartForConditionalGeneration(mbart_config())))
    with torch.no_grad():
        pair.original.final_logits_bias[0, 6] += 100.0  # "c", dropped: the original would say it at once
    ids, mask = _padded([[2, 9, 5, 3], [2, 4, 3]], 0)
    ids_a, _ = _padded([[2, 6, 5, 3], [2, 4, 3]], 0)  # the same texts in trimmed ids
    with torch.inference_mode():
        assert _greedy_differs(pair.original, pair.trimmed, ids, ids_a, mask, KEPT).tolist() == [False, False]
        with torch.no_grad():
            pair.trimmed.final_logits_bias[0, 4] += 100.0  # "a", kept: the trimmed model says it at once
        assert _greedy_differs(pair.original, pair.trimmed, ids, ids_a, mask, KEPT).tolist() == [True, True]


def test_padding_hides_a_pad_row_that_differs_in_a_batch_of_unequal_lengths():
    pair = Pair(randomised(t.BertModel(bert_config())))  # no MLM head, whose tied [PAD] logit would differ
    with torch.no_grad():
        pair.trimmed.get_input_embeddings().weight[0, 0] += 1.0  # [PAD]: in no text, in the padding of "a"
    check = pair.compare(["ab b", "a"], batch_size=2)
    assert (check.compared, check.differing, check.max_hidden_diff, check.passed) == (2, 0, 0.0, True)


def test_the_last_layer_is_compared_not_an_earlier_one():
    config = bert_config()
    config.num_hidden_layers = 2
    pair = Pair(randomised(t.BertModel(config)))
    with torch.no_grad():
        pair.trimmed.encoder.layer[1].output.dense.bias[0] += 0.5  # the last layer only
    check = pair.compare()
    assert check.differing == 3 and check.max_hidden_diff > 0 and not check.passed


def test_a_pretraining_model_has_its_prediction_logits_compared():
    pair = Pair(randomised(t.BertForPreTraining(bert_config())))
    check = pair.compare()
    assert (check.compared, check.max_logit_diff, check.passed) == (3, 0.0, True)
    with torch.no_grad():
        pair.trimmed.cls.predictions.bias[7] += 0.5  # "<x>": the logits alone
    check = pair.compare()
    assert check.max_hidden_diff == 0.0 and math.isclose(check.max_logit_diff, 0.5, rel_tol=1e-5)
    assert check.differing == 3 and not check.passed


def test_a_padded_seq2seq_batch_is_teacher_forced_and_compared_on_its_last_decoder_layer():
    config = mbart_config()
    config.decoder_layers = 2
    pair = Pair(randomised(t.MBartForConditionalGeneration(config)))
    texts = ["ab b", "a b ab", "a"]  # 4, 5 and 3 tokens: padding in a batch of 3
    check = pair.compare(texts, batch_size=3)
    assert (check.compared, check.generated, check.differing, check.max_hidden_diff) == (3, 3, 0, 0.0)
    with torch.no_grad():
        pair.trimmed.model.decoder.layers[1].fc2.bias[0] += 0.5  # the decoder's last layer only
    check = pair.compare(texts, batch_size=3)
    assert check.max_hidden_diff > 0 and check.differing == 3 and not check.passed


class _Generating:
    """A stand-in seq2seq model for `_greedy_differs`: records the settings of each `generate` call
    and answers `answer(input_ids, attention_mask)`."""

    def __init__(self, answer):
        self.config = t.PretrainedConfig(vocab_size=12)
        self.answer, self.calls = answer, []

    def generate(self, input_ids, attention_mask, **settings):
        self.calls.append(settings)
        return self.answer(input_ids, attention_mask)


def test_greedy_generation_is_deterministic_of_a_fixed_length_with_the_mask_given():
    from polyglot_distil.vocab.verify import GENERATE_TOKENS, _greedy_differs

    ids, mask = _padded([[2, 9, 5, 3], [2, 4, 3]], 0)
    ids_a, _ = _padded([[2, 6, 5, 3], [2, 4, 3]], 0)
    original, trimmed = _Generating(lambda i, m: i * m), _Generating(lambda i, m: i * m)
    assert _greedy_differs(original, trimmed, ids, ids_a, mask, KEPT).tolist() == [False, False]
    # sampling or beams would make the verdict depend on chance or on other candidates; a fixed
    # length makes both generations comparable position by position
    greedy = dict(max_new_tokens=GENERATE_TOKENS, min_new_tokens=GENERATE_TOKENS, do_sample=False, num_beams=1)
    assert original.calls == [dict(suppress_tokens=[6, 7, 8, 10], **greedy)] and trimmed.calls == [greedy]
    shorter = _Generating(lambda i, m: i[:, :-1])
    differs = _greedy_differs(original, shorter, ids, ids_a, mask, KEPT)
    assert differs.dtype == torch.bool and differs.tolist() == [True, True]


def test_a_generation_that_differs_where_the_teacher_forced_outputs_agree_fails_the_text():
    config = mbart_config()
    config.tie_word_embeddings = False  # a changed input row then changes only the texts that use it
    pair = Pair(randomised(t.MBartForConditionalGeneration(config)))

    def echo(input_ids, attention_mask, **settings):  # a stand-in generation: the input itself
        return input_ids * attention_mask

    def echo_but_a_a(input_ids, attention_mask, **settings):  # the same, but "a a" (two 4s) generates "b"
        answer = echo(input_ids, attention_mask)
        answer[(input_ids == 4).sum(1) == 2, 1] = 5
        return answer

    pair.original.generate, pair.trimmed.generate = echo, echo_but_a_a
    with torch.no_grad():
        pair.trimmed.model.encoder.embed_tokens.weight[5, 0] += 0.25  # "b": teacher-forced otherwise, generated alike
    check = pair.compare(["a a", "ab b", "ab ab"], batch_size=8)
    # "a a" differs by its generation alone, "ab b" by its teacher-forced outputs alone, "ab ab" not at all
    assert (check.compared, check.generated, check.differing, check.passed) == (3, 3, 2, False)
    pair.trimmed.generate = echo
    assert pair.compare(["a a", "ab ab"], batch_size=8).passed


def test_a_t5_trim_is_teacher_forced_after_its_decoder_start_token():
    from transformers.models.t5 import modeling_t5  # noqa: F401

    pair = Pair(randomised(t.T5ForConditionalGeneration(t.T5Config(
        vocab_size=12, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=3,
        decoder_start_token_id=0))))  # T5 makes no decoder input of its own: it must be given one
    check = pair.compare(["ab b", "a b ab", "a"], batch_size=3)
    assert (check.compared, check.generated, check.differing, check.passed) == (3, 3, 0, True)
