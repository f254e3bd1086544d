"""Tokenizers and teachers off the beaten path (issue 15, item 21): a byte-fallback Unigram model
keeps its `<0xNN>` pieces in a trim (tokenizer.json and the legacy SentencePiece file); an XLM-R
folder with only `sentencepiece.bpe.model` loads (without `protobuf`), counts and trims; a
DistilBERT teacher builds a student."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import CORPORA, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
UNSEEN = "漢字 🤗"  # in no sample: every model here spells it with byte pieces (or <unk>)
LANGS = ("en", "fr", "de", "es", "sw")


def sample_lines() -> list[str]:
    return [line for lang in LANGS for line in (CORPORA / lang / "sample.txt").read_text(encoding="utf-8").splitlines()
            if line.strip()]


def en_text() -> str:
    return next(line for line in (CORPORA / "en" / "sample.txt").read_text(encoding="utf-8").splitlines()
                if line.strip())


def tiny_xlmr(folder: Path, vocab_size: int) -> None:
    """A random 2-layer XLMRobertaForMaskedLM of `vocab_size` rows, saved in `folder`."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    config = XLMRobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    XLMRobertaForMaskedLM(config).save_pretrained(folder)


def mlm_logits(folder: Path, ids: list[int]):
    import torch
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def assert_same_outputs(source: Path, trimmed: Path, report: dict, text: str) -> list[str]:
    """The trimmed tokenizer spells `text` as the source's does (same pieces; ids through
    old_ids) and the trimmed model's logits are the source's at the kept rows. Returns the pieces."""
    import torch

    from polyglot_distil.models.loading import load_tokenizer

    old_ids = torch.tensor(report["old_ids"])
    before, after = load_tokenizer(source), load_tokenizer(trimmed)
    old, new = before(text)["input_ids"], after(text)["input_ids"]
    pieces = after.convert_ids_to_tokens(new)
    assert pieces == before.convert_ids_to_tokens(old)
    assert old_ids[new].tolist() == old
    torch.testing.assert_close(mlm_logits(trimmed, new), mlm_logits(source, old)[:, old_ids], rtol=0, atol=1e-5)
    return pieces


# ---------------------------------------------------------------------------------------------
# (a) a byte-fallback Unigram tokenizer.json (built with `tokenizers`)


@pytest.fixture(scope="module")
def byte_fallback_dir(tmp_path_factory) -> Path:
    """A tiny XLM-R model whose Unigram tokenizer.json (a `tokenizers` Unigram with byte fallback)
    holds `<s> <pad> </s> <unk>`, `<0x00>`..`<0xFF>`, every character of the samples (alone and
    after `▁`) and their 300 most frequent words, `<mask>` last. (transformers loads it as an
    XLMRobertaTokenizer rebuilt from the vocabulary, without byte fallback: the project's loader
    restores it.)"""
    import math
    from collections import Counter

    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    words = Counter(word for line in sample_lines() for word in line.split())
    chars = sorted({c for word in words for c in word})
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:300]
    pieces = [(f"▁{w}", math.log(words[w] / len(words))) for w in frequent]
    pieces += [(p, -12.0) for c in chars for p in (c, f"▁{c}")] + [("▁", -13.0)]
    vocab = [(t, 0.0) for t in ("<s>", "<pad>", "</s>", "<unk>")] + [(b, 0.0) for b in BYTE_PIECES] + pieces
    tokenizer = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(),
                                           decoders.Metaspace(replacement="▁", prepend_scheme="always")])
    tokenizer.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    folder = tmp_path_factory.mktemp("byte_fallback")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    tiny_xlmr(folder, vocab_size=tokenizer.get_vocab_size())
    return folder


@pytest.mark.slow
def test_trim_keeps_every_byte_piece_of_a_byte_fallback_unigram(byte_fallback_dir, tmp_path):
    from polyglot_distil import api
    from polyglot_distil.models.loading import load_tokenizer, vocab_in_id_order

    source = load_tokenizer(byte_fallback_dir)
    assert set(source.tokenize(UNSEEN)) - {"▁"} <= set(BYTE_PIECES)  # the source spells it in bytes
    api.count(str(byte_fallback_dir), {"en": [CORPORA / "en" / "sample.txt"]}, tmp_path / "counts.parquet",
              no_progress=True)
    report = api.trim(str(byte_fallback_dir), tmp_path / "counts.parquet", ["en"], tmp_path / "trimmed",
                      min_count=1, keep_chars=True, verify_lines=20, no_progress=True)  # keeps "▁" alone

    assert report["vocab_size_after"] < report["vocab_size_before"]
    assert report["selection"]["always_kept"]["byte_fallback"]["tokens"] == 256
    trimmed_vocab = vocab_in_id_order(load_tokenizer(tmp_path / "trimmed"))
    assert set(BYTE_PIECES) <= set(trimmed_vocab)
    spec = json.loads((tmp_path / "trimmed" / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["byte_fallback"] is True
    pieces = assert_same_outputs(byte_fallback_dir, tmp_path / "trimmed", report, f"{en_text()} {UNSEEN}")
    assert "<0xE6>" in pieces and "<unk>" not in pieces  # 漢 is E6 BC A2 in UTF-8
    assert load_tokenizer(tmp_path / "trimmed").decode(
        load_tokenizer(tmp_path / "trimmed")(UNSEEN)["input_ids"], skip_special_tokens=True) == UNSEEN


def test_select_reports_byte_pieces_as_always_kept():
    import numpy as np

    from polyglot_distil.vocab.count import Counts, LanguageTotals
    from polyglot_distil.vocab.select import Rules, select_vocabulary

    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<0x00>", "<0x01>", "▁a", "▁b"]
    counts = Counts(tokenizer="test", fingerprint="f", vocab=vocab, unk_id=3)
    counts.occurrences["en"] = counts.line_counts["en"] = np.array([0, 0, 0, 0, 0, 0, 5, 0], dtype=np.int64)
    counts.totals["en"] = LanguageTotals(lines=5, tokens=5)
    selection = select_vocabulary(counts, ["en"], Rules(min_count=1), vocab, [0, 1, 2, 3], byte_ids=[4, 5])
    assert selection.kept_ids.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert selection.report["always_kept"]["byte_fallback"] == {"tokens": 2, "added": 2}


# ---------------------------------------------------------------------------------------------
# (b) an XLM-R folder with only sentencepiece.bpe.model (trained with `sentencepiece`)


def train_sentencepiece(path: Path) -> bytes:
    """A 400-piece byte-fallback SentencePiece Unigram model (`<unk> <s> </s>`, `<0x00>`..`<0xFF>`,
    the pieces) trained on the samples, with the default nmt_nfkc normaliser, as XLM-R's."""
    spm = pytest.importorskip("sentencepiece")
    text = path.with_suffix(".txt")
    text.write_text("\n".join(sample_lines()) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(path.with_suffix("")), vocab_size=400,
                                   model_type="unigram", byte_fallback=True, num_threads=1, minloglevel=2)
    return path.with_suffix(".model").read_bytes()


def without_byte_fallback(data: bytes) -> bytes:
    """The same model file without its byte pieces and with byte_fallback off (training a second
    model would take seconds)."""
    import sentencepiece as spm

    from polyglot_distil.protobuf import fields, varint

    processor = spm.SentencePieceProcessor(model_proto=data)
    is_byte = iter([processor.is_byte(i) for i in range(processor.get_piece_size())])
    out = bytearray()
    for number, raw, payload in fields(data):
        if number == 1 and next(is_byte):
            continue
        if number == 2:  # trainer_spec without byte_fallback (field 35)
            payload = b"".join(r for n, r, _ in fields(payload) if n != 35)
            raw = varint(2 << 3 | 2) + varint(len(payload)) + payload
        out += raw
    return bytes(out)


@pytest.fixture(scope="module")
def spm_dirs(tmp_path_factory) -> dict[str, Path]:
    """{"bytes", "plain"}: XLM-R folders holding config.json, model.safetensors and only
    sentencepiece.bpe.model (with, without byte fallback)."""
    root = tmp_path_factory.mktemp("spm_only")
    with_bytes = train_sentencepiece(root / "bytes.model")
    folders = {}
    for name, data in (("bytes", with_bytes), ("plain", without_byte_fallback(with_bytes))):
        folder = root / name
        folder.mkdir()
        (folder / "sentencepiece.bpe.model").write_bytes(data)
        tiny_xlmr(folder, vocab_size=piece_count(data) + 2)  # <s> <pad> </s> <unk> + the pieces after the first 3 + <mask>
        folders[name] = folder
    return folders


def piece_count(data: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=data).get_piece_size()


def spm_ids(model_file: Path, text: str) -> list[int]:
    """SentencePiece's own ids for `text`, in Hugging Face's XLM-R numbering, within <s> ... </s>."""
    import sentencepiece as spm

    fairseq = {0: 3, 1: 0, 2: 2}  # <unk> <s> </s>
    ids = spm.SentencePieceProcessor(model_file=str(model_file)).encode(text)
    return [0] + [fairseq.get(i, i + 1) for i in ids] + [2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "bytes"])
def test_sentencepiece_only_folder_tokenizes_as_sentencepiece(spm_dirs, kind):
    from polyglot_distil.models.loading import load_tokenizer

    folder = spm_dirs[kind]
    tokenizer = load_tokenizer(folder)
    size = piece_count((folder / "sentencepiece.bpe.model").read_bytes()) + 2
    assert size == (402 if kind == "bytes" else 402 - 256)
    assert type(tokenizer).__name__ == "XLMRobertaTokenizer" and len(tokenizer) == size
    assert tokenizer.mask_token_id == size - 1 and tokenizer.pad_token_id == 1
    lines = sample_lines()[::7] + [UNSEEN, "  two  spaces\tand a tab", "ＦＵＬＬ width ①"]
    for line in lines:
        assert tokenizer(line)["input_ids"] == spm_ids(folder / "sentencepiece.bpe.model", line), line
    if kind == "bytes":
        assert "<0xE6>" in tokenizer.tokenize(UNSEEN)
        assert tokenizer.decode(tokenizer(UNSEEN)["input_ids"], skip_special_tokens=True) == UNSEEN
    else:
        assert tokenizer(UNSEEN)["input_ids"].count(tokenizer.unk_token_id) == 2  # 漢字, 🤗


@pytest.mark.slow
def test_sentencepiece_only_folder_is_built_as_transformers_builds_it(spm_dirs):
    """Without byte fallback, the tokenizer is the one transformers converts (when it can: protobuf)."""
    pytest.importorskip("google.protobuf")
    from transformers import AutoTokenizer

    from polyglot_distil.models.loading import load_tokenizer

    ours = json.loads(load_tokenizer(spm_dirs["plain"]).backend_tokenizer.to_str())
    theirs = json.loads(AutoTokenizer.from_pretrained(spm_dirs["plain"]).backend_tokenizer.to_str())
    assert ours == theirs


@pytest.fixture
def without_protobuf(monkeypatch):
    """transformers as it is without the `protobuf` package: its SentencePiece conversion fails
    and it falls back to `tiktoken` (absent too)."""
    from polyglot_distil.models import loading

    # the module itself: `import transformers.convert_slow_tokenizer as convert` can give the
    # function of that name, which the package exposes once something has imported it
    convert = importlib.import_module("transformers.convert_slow_tokenizer")

    if importlib.util.find_spec("tiktoken") is not None:
        pytest.skip("tiktoken is installed: transformers would read the file with it")

    def no_protobuf(error_message=""):
        raise ImportError("No module named 'google.protobuf'")

    monkeypatch.setattr(convert, "import_protobuf", no_protobuf)
    monkeypatch.setattr(loading, "_has_protobuf", lambda: False, raising=False)


@pytest.mark.slow
def test_sentencepiece_only_folder_counts_and_trims_without_protobuf(spm_dirs, tmp_path, without_protobuf):
    folder = spm_dirs["plain"]
    assert run_cli("count", "--model", folder, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                   "--out", tmp_path / "counts.parquet", "--no-progress") == 0
    assert run_cli("trim", "--model", folder, "--counts", tmp_path / "counts.parquet", "--langs", "en",
                   "--min-count", "1", "--verify-lines", "20", "--out", tmp_path / "trimmed", "--no-progress") == 0
    report = json.loads((tmp_path / "trimmed" / "trim_report.json").read_text(encoding="utf-8"))
    assert report["legacy_files"] == ["sentencepiece.bpe.model"] and report["verify"]["en"]["passed"]
    assert report["vocab_size_after"] < report["vocab_size_before"]


@pytest.mark.slow
def test_other_sentencepiece_folder_without_protobuf_says_so_in_one_line(spm_dirs, tmp_path, without_protobuf,
                                                                         capfd):
    folder = tmp_path / "camembert"
    folder.mkdir()
    (folder / "sentencepiece.bpe.model").write_bytes((spm_dirs["plain"] / "sentencepiece.bpe.model").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CamembertTokenizer"}))
    status = run_cli("count", "--model", folder, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}",
                     "--out", tmp_path / "counts.parquet", "--no-progress")
    assert status == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        f"error: cannot load tokenizer from {folder}: transformers reads its SentencePiece model file only with "
        "the protobuf package; install it: pip install protobuf"]
    assert not (tmp_path / "counts.parquet").exists()


@pytest.mark.slow
def test_trim_sentencepiece_only_byte_fallback_folder(spm_dirs, tmp_path):
    """Count and trim work on the folder; the trimmed legacy file keeps every byte piece and spells
    an unseen character as the trimmed tokenizer.json does, and the trimmed model's outputs on it
    are the source's."""
    import sentencepiece as spm

    from polyglot_distil import api
    from polyglot_distil.models.loading import load_tokenizer

    folder = spm_dirs["bytes"]
    api.count(str(folder), {"en": [CORPORA / "en" / "sample.txt"]}, tmp_path / "counts.parquet", no_progress=True)
    report = api.trim(str(folder), tmp_path / "counts.parquet", ["en"], tmp_path / "trimmed", min_count=1,
                      verify_lines=20, no_progress=True)
    trimmed = tmp_path / "trimmed"
    assert report["vocab_size_after"] < report["vocab_size_before"]
    assert report["legacy_files"] == ["sentencepiece.bpe.model"]
    assert report["selection"]["always_kept"]["byte_fallback"]["tokens"] == 256

    processor = spm.SentencePieceProcessor(model_file=str(trimmed / "sentencepiece.bpe.model"))
    assert processor.get_piece_size() == report["vocab_size_after"] - 2
    byte_ids = [i for i in range(processor.get_piece_size()) if processor.is_byte(i)]
    assert [processor.id_to_piece(i) for i in byte_ids] == BYTE_PIECES

    text = f"{en_text()} {UNSEEN}"
    assert load_tokenizer(trimmed)(text)["input_ids"] == spm_ids(trimmed / "sentencepiece.bpe.model", text)
    pieces = assert_same_outputs(folder, trimmed, report, text)
    assert "<0xE6>" in pieces and "<unk>" not in pieces


# ---------------------------------------------------------------------------------------------
# (c) a DistilBERT teacher


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory) -> Path:
    """A random 4-layer DistilBertForMaskedLM (dim 32, hidden_dim 64, 2 heads) with a WordPiece
    tokenizer trained on the samples."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from polyglot_distil.models.smoke import write_bert_tokenizer

    folder = tmp_path_factory.mktemp("distilbert")
    write_bert_tokenizer(folder, texts=[CORPORA / lang / "sample.txt" for lang in LANGS], vocab_size=300)
    vocab = len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())
    config = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    DistilBertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_distilbert_teacher_builds_a_student(distilbert_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    assert run_cli("student", "--teacher", distilbert_dir, "--out", tmp_path / "student") == 0
    config = AutoConfig.from_pretrained(tmp_path / "student")
    assert (config.model_type, config.n_layers, config.dim, config.hidden_dim, config.n_heads) == (
        "distilbert", 2, 32, 64, 2)
    built = json.loads((tmp_path / "student" / "student.json").read_text())
    assert built["init"] == "teacher" and len(built["init_layers"]) == 2
    teacher, student = load_file(distilbert_dir / "model.safetensors"), load_file(
        tmp_path / "student" / "model.safetensors")
    for j, t in enumerate(built["init_layers"]):
        for name in ("attention.q_lin.weight", "ffn.lin1.weight", "output_layer_norm.bias"):
            assert student[f"distilbert.transformer.layer.{j}.{name}"].equal(
                teacher[f"distilbert.transformer.layer.{t}.{name}"])
    assert student["distilbert.embeddings.word_embeddings.weight"].equal(
        teacher["distilbert.embeddings.word_embeddings.weight"])

    # a narrower student scales the feed-forward size (hidden_dim) with the width
    assert run_cli("student", "--teacher", distilbert_dir, "--out", tmp_path / "narrow", "--hidden-size", "16") == 0
    narrow = AutoConfig.from_pretrained(tmp_path / "narrow")
    assert (narrow.dim, narrow.hidden_dim) == (16, 32)


def test_distilbert_importance_init_is_one_line(distilbert_dir, tmp_path, capsys):
    status = run_cli("student", "--teacher", distilbert_dir, "--out", tmp_path / "student", "--init", "importance",
                     "--importance-text", f"en={CORPORA / 'en' / 'sample.txt'}", "--layers", "2")
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --init importance knows BERT-layout layers")
    assert not (tmp_path / "student").exists()
