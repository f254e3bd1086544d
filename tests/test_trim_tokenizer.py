"""`vocab/trim_tokenizer.py` on tokenizers built by hand in memory (a dozen tokens each, no files,
milliseconds): the model type check, the byte pieces and the byte-level alphabet a trim must keep,
BPE merges and their closure, and the trimmed backend (WordPiece, Unigram, BPE) with its added
tokens, post-processor, padding and truncation, wrapped in the source's class with its settings;
the legacy files. tests/test_trim.py and test_trim_bpe.py prove the same on trained tokenizers end
to end; these are the fast unit tests docs/mutation.md runs each mutant against."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from polyglot_distil.errors import UserError
from polyglot_distil.models.loading import vocab_in_id_order
from polyglot_distil.vocab.trim_tokenizer import BYTE_PIECES, bpe_merges, byte_alphabet_ids, byte_fallback_ids, \
    close_under_merges, merge_result, tokenizer_model_type, trim_backend, trim_tokenizer, vocab_size, \
    write_vocab_and_merges, write_vocab_txt

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "##b", "##c", "ab", "abc"]


def spec_of(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def wordpiece(post_processor=None, added=("<x>",)):
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(WORDPIECE)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = post_processor or processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    backend.enable_padding(pad_id=3, pad_token="[SEP]")
    backend.enable_truncation(16)
    backend.add_special_tokens(list(added))  # id 11
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   do_lower_case=True, model_max_length=7)


def bpe(merges=(("a", "b"), ("ab", "c"), ("b", "c")), prefix=None, dropout=None, byte_fallback=False,
        tokens=("<unk>", "a", "b", "c", "ab", "abc", "bc")):
    options = {"continuing_subword_prefix": prefix} if prefix else {}
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, list(merges), unk_token="<unk>",
                                   dropout=dropout, byte_fallback=byte_fallback, **options))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def unigram(unk_id=1):
    pieces = [("<pad>", 0.0), ("<unk>", 0.0), ("a", -1.0), ("b", -2.0), ("ab", -0.5), ("c", -3.0)]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram(pieces, unk_id=unk_id)))


# ---------------------------------------------------------------------------------------------
# What a tokenizer is, and what a trim must keep


def test_vocab_size_counts_added_tokens():
    assert vocab_size(wordpiece()) == 12 and vocab_size(wordpiece(added=())) == 11


def test_the_three_supported_types_are_named_and_others_refused():
    assert tokenizer_model_type(wordpiece(), "m") == "WordPiece"
    assert tokenizer_model_type(unigram(), "m") == "Unigram"
    assert tokenizer_model_type(bpe(), "m") == "BPE"
    words = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    with pytest.raises(UserError) as raised:
        tokenizer_model_type(words, "folder/m")
    assert str(raised.value) == (
        "cannot trim folder/m: its tokenizer is WordLevel; supported: WordPiece (BERT family: bert, distilbert, ...); "
        "SentencePiece Unigram (XLM-R, T5 / mT5 families); BPE, byte-level (GPT-2, RoBERTa, Qwen) or "
        "SentencePiece-style with byte fallback (Gemma, mmBERT)")
    with pytest.raises(UserError) as raised:
        tokenizer_model_type(bpe(dropout=0.1), "folder/m")
    assert str(raised.value) == ("cannot trim folder/m: its BPE tokenizer has dropout (random merges), so no trim "
                                 "can reproduce its tokens; save it without dropout first")


def with_byte_pieces(count: int, byte_fallback: bool):
    tokens = ["<unk>", "a", *BYTE_PIECES[:count], "b"]
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [], unk_token="<unk>",
                                   byte_fallback=byte_fallback))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_byte_pieces_are_kept_when_all_256_are_there_or_the_model_falls_back_to_bytes():
    assert byte_fallback_ids(with_byte_pieces(256, False)) == list(range(2, 258))
    assert byte_fallback_ids(with_byte_pieces(256, True)) == list(range(2, 258))
    assert byte_fallback_ids(with_byte_pieces(3, True)) == [2, 3, 4]
    assert byte_fallback_ids(with_byte_pieces(3, False)) == []
    assert byte_fallback_ids(with_byte_pieces(0, True)) == []
    assert byte_fallback_ids(wordpiece()) == []


def with_pre_tokenizer(pre_tokenizer):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<unk>", *alphabet[:5], "ab"]
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [], unk_token="<unk>"))
    if pre_tokenizer is not None:
        backend.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_the_byte_level_alphabet_is_kept_when_a_byte_level_pre_tokenizer_is_there():
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert byte_alphabet_ids(with_pre_tokenizer(byte_level)) == [1, 2, 3, 4, 5]
    assert byte_alphabet_ids(with_pre_tokenizer(pre_tokenizers.Sequence([pre_tokenizers.Digits(), byte_level]))) == \
        [1, 2, 3, 4, 5]
    assert byte_alphabet_ids(with_pre_tokenizer(pre_tokenizers.Sequence([pre_tokenizers.Digits()]))) == []
    assert byte_alphabet_ids(with_pre_tokenizer(pre_tokenizers.Whitespace())) == []
    assert byte_alphabet_ids(with_pre_tokenizer(None)) == []
    from types import SimpleNamespace

    empty_sequence = json.dumps({"pre_tokenizer": {"type": "Sequence"}})  # no "pretokenizers" list: none
    assert byte_alphabet_ids(SimpleNamespace(backend_tokenizer=SimpleNamespace(to_str=lambda: empty_sequence))) == []


# ---------------------------------------------------------------------------------------------
# BPE merges


def test_merges_are_read_as_pairs_or_strings_and_a_prefix_is_dropped_from_the_right_part():
    assert bpe_merges({"merges": ["a b", ["ab", "c d"], "x y z"]}) == [("a", "b"), ("ab", "c d"), ("x", "y z")]
    # tokens of other whitespace (Gemma's "\t", "\n\n"): only the one space separates
    assert bpe_merges({"merges": ["\t \t", "\n\n \n", "a\u3000b c"]}) == [("\t", "\t"), ("\n\n", "\n"),
                                                                           ("a\u3000b", "c")]
    assert merge_result({"continuing_subword_prefix": "##"}, "a", "##bc") == "abc"
    assert merge_result({"continuing_subword_prefix": None}, "a", "##b") == "a##b"
    assert merge_result({}, "ab", "c") == "abc"


def test_the_kept_ids_are_closed_under_the_merges_that_make_them():
    closed, added = close_under_merges(bpe(), np.array([0, 5]))  # abc = ab + c = (a + b) + c
    assert closed.tolist() == [0, 1, 2, 3, 4, 5] and added == 4 and closed.dtype == np.int64
    closed, added = close_under_merges(bpe(), np.array([], dtype=np.int64))
    assert closed.dtype == np.int64 and closed.tolist() == [] and added == 0  # ids, even when there are none
    closed, added = close_under_merges(bpe(), np.array([0, 1, 6]))  # bc = b + c
    assert closed.tolist() == [0, 1, 2, 3, 6] and added == 2
    assert close_under_merges(bpe(), np.array([0, 2, 3]))[1] == 0
    kept = np.array([0, 2])
    assert close_under_merges(wordpiece(), kept) == (kept, 0)


def test_a_merge_naming_a_token_the_vocabulary_lacks_is_a_damaged_tokenizer():
    """`tokenizers` refuses to load such a file today; the check names it if another version does
    not (a stand-in tokenizer gives close_under_merges the damaged model)."""
    from types import SimpleNamespace

    for merges, lacking in (((("a", "b"), ("b", "a")), None), ((("a", "b"), ("ab", "x")), None),
                            ((("x", "a"),), None), ((("a", "b"),), "a"), ((("a", "b"),), "b")):
        spec = spec_of(bpe())
        spec["model"]["merges"] = [list(m) for m in merges]
        spec["model"]["vocab"].pop(lacking, None)  # a part missing, the token it makes there
        tokenizer = SimpleNamespace(backend_tokenizer=SimpleNamespace(to_str=lambda spec=spec: json.dumps(spec)))
        with pytest.raises(UserError) as raised:
            close_under_merges(tokenizer, np.array([0, 4]))
        left, right = merges[-1]
        assert str(raised.value) == (f"the BPE merge {left!r} + {right!r} names a token its vocabulary lacks; "
                                     "the tokenizer is damaged")


# ---------------------------------------------------------------------------------------------
# The trimmed backend


def test_a_wordpiece_backend_is_renumbered_with_its_added_tokens_post_processor_and_padding():
    kept = np.array([0, 1, 2, 3, 4, 5, 9, 11])  # drops c, ##b, ##c, abc
    spec = spec_of_backend(trim_backend(wordpiece(), kept))
    assert spec["model"]["vocab"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "ab": 6}
    assert [(t["content"], t["id"]) for t in spec["added_tokens"]] == [("[PAD]", 0), ("[UNK]", 1), ("<x>", 7)]
    assert spec["post_processor"]["sep"] == ["[SEP]", 3] and spec["post_processor"]["cls"] == ["[CLS]", 2]
    assert spec["padding"]["pad_id"] == 3 and spec["truncation"] is None


def spec_of_backend(backend) -> dict:
    return json.loads(backend.to_str())


def test_special_ids_that_move_are_remapped_in_every_post_processor_kind_and_dropped_added_tokens_go():
    kept = np.array([1, 2, 3, 4, 9, 10])  # [PAD] and <x> dropped: [CLS] 2 -> 1, [SEP] 3 -> 2
    template = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    roberta = processors.RobertaProcessing(("[SEP]", 3), ("[CLS]", 2))
    bert = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    for processor in (template, roberta, bert, processors.Sequence([processors.ByteLevel(), template])):
        tokenizer = wordpiece(processor)
        spec = spec_of(tokenizer)
        spec["padding"]["pad_id"] = 4  # "a"
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
        trimmed = spec_of_backend(trim_backend(tokenizer, kept))
        assert [(t["content"], t["id"]) for t in trimmed["added_tokens"]] == [("[UNK]", 0), ("[SEP]", 2)]
        assert trimmed["padding"]["pad_id"] == 3
        post = trimmed["post_processor"]
        if post["type"] == "Sequence":
            post = post["processors"][1]
        if post["type"] == "TemplateProcessing":
            assert {k: v["ids"] for k, v in post["special_tokens"].items()} == {"[CLS]": [1], "[SEP]": [2]}
        else:
            assert (post["cls"], post["sep"]) == (["[CLS]", 1], ["[SEP]", 2])
    no_padding = spec_of(wordpiece())
    no_padding["padding"], no_padding["post_processor"] = None, None
    from types import SimpleNamespace

    plain = SimpleNamespace(backend_tokenizer=Tokenizer.from_str(json.dumps(no_padding)))  # the wrapper would add one
    trimmed = spec_of_backend(trim_backend(plain, kept))
    assert trimmed["padding"] is None and trimmed["post_processor"] is None


def test_a_post_processor_spec_without_its_lists_has_nothing_to_remap():
    from polyglot_distil.vocab.trim_tokenizer import _remap_post_processor

    for spec in ({"type": "Sequence"}, {"type": "TemplateProcessing"}, {"type": "ByteLevel"}, {}):
        _remap_post_processor(spec, np.array([0]))  # no error, nothing added
        assert len(spec) <= 1
    _remap_post_processor(None, np.array([0]))


def test_a_unigram_backend_keeps_its_pieces_in_order_with_their_scores_and_its_unk_id():
    spec = spec_of_backend(trim_backend(unigram(), np.array([0, 1, 4, 5])))
    assert spec["model"]["vocab"] == [["<pad>", 0.0], ["<unk>", 0.0], ["ab", -0.5], ["c", -3.0]]
    assert spec["model"]["unk_id"] == 1
    with_added = unigram()
    with_added.backend_tokenizer.add_special_tokens(["<mask>"])  # id 6, after the 6 pieces
    spec = spec_of_backend(trim_backend(with_added, np.array([0, 1, 4, 6])))
    assert spec["model"]["vocab"] == [["<pad>", 0.0], ["<unk>", 0.0], ["ab", -0.5]]
    assert [(t["content"], t["id"]) for t in spec["added_tokens"]] == [("<mask>", 3)]
    spec = spec_of_backend(trim_backend(unigram(unk_id=2), np.array([2, 4])))
    assert spec["model"]["unk_id"] == 0
    spec = spec_of_backend(trim_backend(unigram(unk_id=None), np.array([0, 3])))
    assert spec["model"]["unk_id"] is None and spec["model"]["vocab"] == [["<pad>", 0.0], ["b", -2.0]]


def test_a_bpe_backend_keeps_only_the_merges_of_kept_tokens_in_their_order():
    spec = spec_of_backend(trim_backend(bpe(), np.array([0, 1, 2, 3, 4, 5])))  # bc dropped
    assert spec["model"]["vocab"] == {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5}
    assert spec["model"]["merges"] == [["a", "b"], ["ab", "c"]]
    spec = spec_of_backend(trim_backend(bpe(), np.array([0, 1, 2, 3, 6])))  # ab and abc dropped: b + c stays
    assert spec["model"]["merges"] == [["b", "c"]]
    spec = spec_of_backend(trim_backend(bpe(), np.array([0, 2, 3, 6])))  # a dropped
    assert spec["model"]["merges"] == [["b", "c"]]
    spec = spec_of_backend(trim_backend(bpe(), np.array([0, 1, 3, 4])))  # b dropped (not closed: no merge left)
    assert spec["model"]["merges"] == []
    prefixed = bpe(merges=(("a", "##b"),), prefix="##", tokens=("<unk>", "a", "##b", "ab", "x"))
    assert spec_of_backend(trim_backend(prefixed, np.array([0, 1, 2, 3])))["model"]["merges"] == [["a", "##b"]]


def test_another_model_type_is_refused_by_the_backend_too():
    words = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    with pytest.raises(UserError) as raised:
        trim_backend(words, np.array([0, 1]))
    assert str(raised.value) == (
        "cannot trim a WordLevel tokenizer; supported: WordPiece (BERT family: bert, distilbert, ...); SentencePiece "
        "Unigram (XLM-R, T5 / mT5 families); BPE, byte-level (GPT-2, RoBERTa, Qwen) or SentencePiece-style with "
        "byte fallback (Gemma, mmBERT)")


# ---------------------------------------------------------------------------------------------
# The transformers tokenizer and the legacy files


def test_the_trimmed_tokenizer_keeps_the_class_settings_and_tokenizes_as_the_source_renumbered():
    source = wordpiece()
    kept = np.array([0, 1, 2, 3, 4, 5, 9, 11])
    trimmed = trim_tokenizer(source, kept)
    assert type(trimmed) is type(source)
    assert vocab_in_id_order(trimmed) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "ab", "<x>"]
    assert trimmed.model_max_length == 7 and trimmed.init_kwargs["do_lower_case"] is True
    assert trimmed.pad_token == "[PAD]" and trimmed.pad_token_id == 0 and trimmed.unk_token_id == 1
    assert source("ab b <x>").input_ids == [2, 9, 5, 11, 3] and trimmed("ab b <x>").input_ids == [2, 6, 5, 7, 3]
    assert trimmed.backend_tokenizer.truncation is None


def test_added_tokens_of_the_source_settings_are_renumbered_or_dropped():
    from transformers import AddedToken

    source = wordpiece()
    source.init_kwargs["added_tokens_decoder"] = {  # their settings, which the backend alone does not hold
        11: AddedToken("<x>", special=False, lstrip=True), 10: AddedToken("abc", special=False),
        0: AddedToken("[PAD]", special=True, rstrip=True)}
    trimmed = trim_tokenizer(source, np.array([0, 1, 2, 3, 4, 5, 9, 11]))
    decoder = trimmed.added_tokens_decoder
    assert (decoder[7].content, decoder[7].lstrip, decoder[7].special) == ("<x>", True, False)
    assert (decoder[0].content, decoder[0].rstrip) == ("[PAD]", True)
    assert "abc" not in {t.content for t in decoder.values()}


def test_a_rebuilt_vocabulary_that_is_not_the_kept_one_is_a_bug_raised(monkeypatch):
    import polyglot_distil.vocab.trim_tokenizer as module

    real = module.trim_backend
    monkeypatch.setattr(module, "trim_backend", lambda tokenizer, kept: real(tokenizer, kept[:-1]))
    with pytest.raises(RuntimeError, match="^the rebuilt tokenizer's vocabulary is not the kept vocabulary in order$"):
        trim_tokenizer(wordpiece(), np.array([0, 1, 2, 3, 4, 5]))


def test_the_legacy_files_list_the_vocabulary_and_merges_in_order(tmp_path):
    write_vocab_txt(wordpiece(), tmp_path / "vocab.txt")
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == "\n".join(WORDPIECE + ["<x>"]) + "\n"
    spec = spec_of(bpe())
    spec["model"]["vocab"]["é"] = 7
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
    assert write_vocab_and_merges(tokenizer, tmp_path) == ["vocab.json", "merges.txt"]
    assert (tmp_path / "vocab.json").read_text(encoding="utf-8") == (
        '{"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5, "bc": 6, "é": 7}\n')
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8") == "#version: 0.2\na b\nab c\nb c\n"
