"""Tiny random-weight models around tokenizers trained here with `tokenizers` on multilingual text
of ../shared/data (English and Swahili Global Voices, XNLI premises of five languages):

- byte-level BPE as RoBERTa's (ByteLevel pre-tokenizer, the 256-character byte alphabet, no unknown
  token), and as Qwen's (a Split regex before ByteLevel, `ignore_merges`);
- SentencePiece-style BPE as Gemma's (Metaspace `▁`, `byte_fallback` with `<0x00>`..`<0xFF>`
  pieces, `<unk>`);
- SentencePiece Unigram as mT5's (`<pad> </s> <unk>` first, `</s>` after the text), and as
  mBART's with its language codes (`en_XX`, `sw_KE`, ...) and `<mask>` last.

The BPEs have a few thousand merges. Used by tests/test_trim_bpe.py and tests/test_trim_families.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import shared

XNLI_LANGS = ("en", "fr", "de", "ru", "zh")
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's first ids: its position ids need pad = 1
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")


def swahili(start: int, n: int) -> list[str]:
    """Non-empty lines start..start+n of the Swahili side of Global Voices."""
    lines = shared("text", "GlobalVoices.en-sw.sw").read_text(encoding="utf-8").splitlines()
    return [line for line in lines[start:start + n] if line.strip()]


def trim_to_swahili(root: Path, source: Path, verify_lines: int) -> dict:
    """Trim the model folder `source` into `root / "trimmed"`: count 400 Swahili lines (from line
    3000), keep the tokens seen twice, verify on the first `verify_lines` of them. Returns the report."""
    from polyglot_distil.data.corpus import parse_sources
    from polyglot_distil.models.loading import load_tokenizer
    from polyglot_distil.vocab.count import count_corpora
    from polyglot_distil.vocab.select import Rules
    from polyglot_distil.vocab.trim import trim

    corpus = root / "sw.txt"
    corpus.write_text("\n".join(swahili(3000, 400)) + "\n", encoding="utf-8")
    counts = count_corpora(str(source), {"sw": parse_sources([str(corpus)])}, show_progress=False,
                           tokenizer=load_tokenizer(source))
    return trim(str(source), counts, ["sw"], Rules(min_count=2), root / "trimmed",
                verify_texts={"sw": swahili(3000, verify_lines)}, show_progress=False, log=lambda *_: None)


def training_lines(per_source: int = 1500) -> list[str]:
    """Lines of Swahili and English Global Voices and of XNLI dev premises in five languages."""
    text = shared("text")
    lines = []
    for path in (text / "GlobalVoices.en-sw.sw", text / "GlobalVoices.en-sw.en"):
        lines += path.read_text(encoding="utf-8").splitlines()[:per_source]
    for lang in XNLI_LANGS:
        rows = shared("xnli", f"dev-{lang}.tsv").read_text(encoding="utf-8").splitlines()[1:per_source + 1]
        lines += [row.split("\t")[0] for row in rows]
    return [line for line in lines if line.strip()]


def random_texts(lines: list[str], n: int, seed: int) -> list[str]:
    """Texts made of random runs of words from `lines`, some cut mid-word, some glued."""
    rng = random.Random(seed)
    words = [w for line in lines for w in line.split()]
    texts = []
    for _ in range(n):
        start = rng.randrange(len(words))
        text = " ".join(words[start:start + rng.randint(1, 8)])
        if rng.random() < 0.3:
            cut = rng.randrange(len(text) + 1)
            text = text[cut:] if rng.random() < 0.5 else text[:cut]
        if rng.random() < 0.2:
            text = text.replace(" ", "", 1)
        texts.append(text)
    return texts


def random_unicode(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = [chr(c) for c in list(range(0x20, 0x250)) + list(range(0x400, 0x500)) + list(range(0x4E00, 0x4E80))
            + [0x1F917, 0x1F600, 0x0301, 0x200D, 0xFEFF]]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 20))) for _ in range(n)]


def byte_level_bpe(lines: list[str], vocab_size: int = 3000, qwen: bool = False):
    """A RoBERTa-style byte-level BPE (`qwen`: Qwen's regex split and `ignore_merges`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not qwen)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"), byte_level]) if qwen else byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    if qwen:
        spec = json.loads(tokenizer.to_str())
        spec["model"]["ignore_merges"] = True
        tokenizer = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    return tokenizer


def sentencepiece_bpe(lines: list[str], vocab_size: int = 3000):
    """A Gemma-style BPE: Metaspace `▁` word starts, `<unk>`, byte fallback over the 256 `<0xNN>`
    pieces (ids 5-260), then the trained tokens and their merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tokenizer.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    trainer_tokenizer.train_from_iterator(lines, trainer)
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    tokens = SPECIALS + BYTE_PIECES + [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1])
                                      if t not in SPECIALS]
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1)) for m in trained["merges"]]
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, unk_token="<unk>",
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = metaspace
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tokenizer


def save_tokenizer(tokenizer, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    wrapped.save_pretrained(folder)


def tiny_model(kind: str, vocab_size: int, folder: Path) -> None:
    """A random model of `kind` ("roberta", "qwen2", "modernbert", "gemma3", "gemma3_embedding"):
    hidden 32, 2 layers, `vocab_size` rows, saved in `folder`."""
    import torch
    import transformers as t

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if kind == "roberta":
        model = t.RobertaForMaskedLM(t.RobertaConfig(**common, max_position_embeddings=258, type_vocab_size=1))
    elif kind == "qwen2":
        model = t.Qwen2ForCausalLM(t.Qwen2Config(**common, num_key_value_heads=1, max_position_embeddings=256,
                                                 tie_word_embeddings=True))
    elif kind == "modernbert":
        model = t.ModernBertForMaskedLM(t.ModernBertConfig(**common, max_position_embeddings=256, cls_token_id=0,
                                                           sep_token_id=2, global_attn_every_n_layers=1,
                                                           local_attention=64))
    elif kind == "gemma3":
        model = t.Gemma3ForCausalLM(t.Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=16,
                                                       max_position_embeddings=256, sliding_window=64))
    elif kind == "gemma3_embedding":  # EmbeddingGemma's body: bidirectional attention, no head
        model = t.Gemma3TextModel(t.Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=16,
                                                     max_position_embeddings=256, sliding_window=64,
                                                     use_bidirectional_attention=True))
    else:
        raise ValueError(kind)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights, so that a wrong row or column shows in every output
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)


MBART_LANG_CODES = ["en_XX", "fr_XX", "de_DE", "ru_RU", "sw_KE", "zh_CN"]


def unigram(lines: list[str], specials: list[str], vocab_size: int = 1500, suffix: list[str] = ()):
    """A SentencePiece-style Unigram (Metaspace `▁`) with `specials` first and `suffix` (special
    tokens too) after the trained pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.add_special_tokens(list(suffix))
    return tokenizer


def mt5_tokenizer(lines: list[str]):
    from tokenizers import processors

    tokenizer = unigram(lines, ["<pad>", "</s>", "<unk>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return tokenizer


def mbart_tokenizer(lines: list[str], lang: str = "sw_KE"):
    """mBART-50's layout: `<s> <pad> </s> <unk>`, the pieces, the language codes, `<mask>`; a
    source text is `<lang> ... </s>` (mBART-50's order)."""
    from tokenizers import processors

    tokenizer = unigram(lines, ["<s>", "<pad>", "</s>", "<unk>"], suffix=MBART_LANG_CODES + ["<mask>"])
    code = tokenizer.token_to_id(lang)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{lang} $A </s>", pair=f"{lang} $A $B </s>", special_tokens=[(lang, code), ("</s>", 2)])
    return tokenizer


def save_seq2seq_tokenizer(tokenizer, folder: Path, kind: str) -> None:
    from transformers import PreTrainedTokenizerFast

    if kind == "mt5":
        specials = dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    else:
        specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                        mask_token="<mask>", additional_special_tokens=MBART_LANG_CODES)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials).save_pretrained(folder)


def tiny_seq2seq(kind: str, tokenizer, folder: Path) -> None:
    """A random MT5ForConditionalGeneration (untied lm_head) or MBartForConditionalGeneration
    (shared embeddings tied to the head, a random `final_logits_bias`): d_model 32, 2 + 2 layers."""
    import torch
    import transformers as t

    size = tokenizer.get_vocab_size()
    if kind == "mt5":
        config = t.MT5Config(vocab_size=size, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                             num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                             tie_word_embeddings=False)
        model = t.MT5ForConditionalGeneration(config)
    else:
        config = t.MBartConfig(vocab_size=size, d_model=32, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                               decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2, decoder_start_token_id=2)
        model = t.MBartForConditionalGeneration(config)
        model.generation_config.forced_bos_token_id = tokenizer.token_to_id("sw_KE")  # mBART-50 generates into sw
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        if kind == "mbart":
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=generator))
    if kind == "mt5":  # mT5's own lm_head, as its checkpoints hold (transformers unties it when loading them)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
    model.save_pretrained(folder)


def tiny_mobilebert(vocab_size: int, folder: Path) -> None:
    """A random MobileBertForMaskedLM whose embedding (16) is narrower than its hidden size (32): its
    head's `dense` is [32 - 16, V], indexed by token id along its second axis."""
    import torch
    import transformers as t

    config = t.MobileBertConfig(vocab_size=vocab_size, hidden_size=32, embedding_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, intra_bottleneck_size=16,
                                true_hidden_size=16, num_feedforward_networks=1, max_position_embeddings=128,
                                pad_token_id=0)
    model = t.MobileBertForMaskedLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)


def embedding_gemma_style(folder: Path, lines: list[str]) -> None:
    """A sentence-transformers folder as EmbeddingGemma's: a bidirectional Gemma 3 body around a
    SentencePiece-style BPE, mean pooling, normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    body_folder = folder.parent / f"{folder.name}-body"
    tokenizer = sentencepiece_bpe(lines)
    save_tokenizer(tokenizer, body_folder)
    tiny_model("gemma3_embedding", tokenizer.get_vocab_size(), body_folder)
    body = Transformer(str(body_folder))
    SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean"), Normalize()]).save(str(folder))
