"""`trim`: for BERT (WordPiece) and XLM-R (Unigram), each with a tiny vocabulary and with the real
mBERT / XLM-R vocabulary, the folder loads with `AutoModel*` and `AutoTokenizer` alone, ids map
through `old_ids`, hidden states and MLM logits over kept tokens are bitwise those of the source,
special ids are right after save and load, and the legacy files agree with tokenizer.json. Bad
input ends with one line, exit status 2 and no folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPORA, run_cli, shared, transformers_log
from polyglot_distil.data.corpus import Caps, iter_language, parse_sources
from polyglot_distil.vocab.count import count_corpora, write_counts
from polyglot_distil.data.tokenization import untruncated
from polyglot_distil.models.loading import load_tokenizer, vocab_in_id_order
from polyglot_distil.vocab.select import Rules, id_map_for

# The real vocabularies cost seconds to build and trim: the fast loop (pytest -m "not slow") takes the tiny ones.
KINDS = ["tiny_bert", "tiny_xlmr", pytest.param("mbert", marks=pytest.mark.slow),
         pytest.param("xlmr_real", marks=pytest.mark.slow)]
EN_FR = [CORPORA / "en" / "sample.txt", CORPORA / "fr" / "sample.txt"]


def with_random_mlm_bias(source: Path, folder: Path) -> Path:
    """A copy of a smoke model whose MLM output bias is random (it starts at zero, and a truncated
    zero bias would look re-indexed)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if k in ("cls.predictions.bias", "lm_head.bias"))
    weights[name] = torch.randn(weights[name].shape, generator=torch.Generator().manual_seed(1))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def lines_of(sources: list, n: int) -> list[str]:
    return list(iter_language(parse_sources([str(s) for s in sources]), Caps(max_lines=n, sample="head")))


class Trimmed:
    """A source folder, its trim, texts of the trimmed languages, and both tokenizers (loaded once:
    the real XLM-R one takes seconds)."""

    def __init__(self, source: Path, out: Path, texts: list[str], before=None):
        self.source, self.out, self.texts = source, out, texts
        self.report = json.loads((out / "trim_report.json").read_text(encoding="utf-8"))
        self.old_ids = np.asarray(self.report["old_ids"], dtype=np.int64)
        self.before, self.after = before or load_tokenizer(source), load_tokenizer(out)
        id_map = id_map_for(self.old_ids, len(vocab_in_id_order(self.before)))
        with untruncated(self.before) as backend:
            self.covered = [text for text in texts if (id_map[backend.encode(text).ids] >= 0).all()]
        assert len(self.covered) >= 10  # the equivalence tests would prove nothing on fewer texts


def make_trim(tmp: Path, source: Path, corpus: dict[str, list], rules: Rules, verify_lines: int = 40) -> Trimmed:
    from polyglot_distil.vocab.trim import trim

    source = with_random_mlm_bias(source, tmp / "source")
    languages = {lang: parse_sources([str(s) for s in files]) for lang, files in corpus.items()}
    before = load_tokenizer(source)
    counts = count_corpora(str(source), languages, show_progress=False, tokenizer=before)
    texts = {lang: lines_of(files, verify_lines) for lang, files in corpus.items()}
    trim(str(source), counts, list(corpus), rules, tmp / "trimmed", verify_texts=texts, show_progress=False,
         log=lambda *_: None)
    return Trimmed(source, tmp / "trimmed", [t for lang_texts in texts.values() for t in lang_texts], before)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tiny_bert_dir):
    return make_trim(tmp_path_factory.mktemp("trim_bert"), tiny_bert_dir,
                     {"en": [EN_FR[0]], "fr": [EN_FR[1]]}, Rules(min_count=2))


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory, tiny_xlmr_dir):
    return make_trim(tmp_path_factory.mktemp("trim_xlmr"), tiny_xlmr_dir,
                     {"en": [EN_FR[0]], "fr": [EN_FR[1]]}, Rules(min_count=2))


def xnli_corpus() -> dict[str, list]:
    xnli = shared("xnli")
    return {lang: [xnli / f"dev-{lang}.tsv"] for lang in ("en", "fr")}


@pytest.fixture(scope="module")
def mbert(tmp_path_factory, mbert_vocab_dir):
    return make_trim(tmp_path_factory.mktemp("trim_mbert"), mbert_vocab_dir, xnli_corpus(), Rules())


@pytest.fixture(scope="module")
def xlmr_real(tmp_path_factory, xlmr_tokenizer_dir):
    return make_trim(tmp_path_factory.mktemp("trim_xlmr_real"), xlmr_tokenizer_dir, xnli_corpus(), Rules())


@pytest.fixture(params=KINDS)
def trimmed(request) -> Trimmed:
    return request.getfixturevalue(request.param)


def load_eager(folder, model_class):
    return model_class.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


# ---------------------------------------------------------------------------------------------
# Equivalence


def test_token_ids_map_through_old_ids_on_covered_text(trimmed):
    before, after = trimmed.before, trimmed.after
    for text in trimmed.covered:
        old, new = before(text, truncation=False)["input_ids"], after(text, truncation=False)["input_ids"]
        assert trimmed.old_ids[new].tolist() == old


def test_hidden_states_and_mlm_logits_are_bitwise_equal_on_covered_text(trimmed):
    from transformers import AutoModelForMaskedLM

    original = load_eager(trimmed.source, AutoModelForMaskedLM)
    trimmed_model = load_eager(trimmed.out, AutoModelForMaskedLM)
    before, after = trimmed.before, trimmed.after
    kept = torch.as_tensor(trimmed.old_ids)
    decoder = original.get_output_embeddings()
    with torch.inference_mode():
        for text in trimmed.covered[:10]:
            out_b = original(**before(text, return_tensors="pt"), output_hidden_states=True)
            out_a = trimmed_model(**after(text, return_tensors="pt"), output_hidden_states=True)
            assert torch.equal(out_b.hidden_states[-1], out_a.hidden_states[-1])
            # the original's logits over kept tokens, computed with the trimmed decoder's shapes
            head_input = {}
            hook = decoder.register_forward_hook(lambda m, args, out: head_input.update(x=args[0]))
            original(**before(text, return_tensors="pt"))
            hook.remove()
            expected = torch.nn.functional.linear(head_input["x"], decoder.weight[kept], decoder.bias[kept])
            assert torch.equal(expected, out_a.logits)


def test_mlm_bias_is_reindexed_not_truncated(trimmed):
    from transformers import AutoModelForMaskedLM

    bias_before = AutoModelForMaskedLM.from_pretrained(trimmed.source).get_output_embeddings().bias.detach()
    bias_after = AutoModelForMaskedLM.from_pretrained(trimmed.out).get_output_embeddings().bias.detach()
    assert torch.equal(bias_after, bias_before[torch.as_tensor(trimmed.old_ids)])
    assert not torch.equal(bias_after, bias_before[: len(bias_after)])


def test_decoder_stays_tied_to_the_input_embedding(trimmed):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(trimmed.out)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size == len(trimmed.old_ids)


def test_quick_verify_ran_and_found_everything_equal(trimmed):
    for lang, check in trimmed.report["verify"].items():
        assert check["compared"] > 0 and check["differing"] == 0
        assert check["max_hidden_diff"] == 0 and check["max_logit_diff"] == 0


# ---------------------------------------------------------------------------------------------
# Loading with transformers alone


@pytest.mark.parametrize("auto_class", ["AutoModelForMaskedLM", "AutoModelForSequenceClassification", "AutoModel"])
def test_folder_loads_with_auto_classes(trimmed, auto_class):
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(trimmed.out)
    assert model.get_input_embeddings().weight.shape[0] == len(trimmed.old_ids)


def test_special_ids_are_right_after_save_and_load(trimmed):
    from transformers import AutoConfig

    before, after = trimmed.before, trimmed.after
    config = AutoConfig.from_pretrained(trimmed.out)
    id_map = id_map_for(trimmed.old_ids, len(vocab_in_id_order(before)))
    for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        assert getattr(after, f"{name}_id") == id_map[getattr(before, f"{name}_id")]
        assert after.convert_ids_to_tokens(getattr(after, f"{name}_id")) == getattr(before, name)
    assert config.pad_token_id == after.pad_token_id
    ids = after("bonjour", "hello")["input_ids"]
    assert ids[0] == after.cls_token_id and ids[-1] == after.sep_token_id
    pair_cls_sep = before("bonjour", "hello")["input_ids"]
    assert [t for t in ids if t in after.all_special_ids] == id_map[
        [t for t in pair_cls_sep if t in before.all_special_ids]].tolist()


def test_xlmr_keeps_its_first_ids_and_mask_last(tiny_xlmr):
    tokenizer = tiny_xlmr.after
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.mask_token_id == len(tiny_xlmr.old_ids) - 1


@pytest.mark.slow
def test_mbert_specials_move_and_are_remapped_everywhere(mbert):
    tokenizer = mbert.after
    assert tokenizer.cls_token_id < 101  # [CLS] was 101, behind [unused1..99]
    spec = json.loads((mbert.out / "tokenizer.json").read_text(encoding="utf-8"))
    template_ids = {name: token["ids"] for name, token in spec["post_processor"]["special_tokens"].items()}
    assert template_ids == {"[CLS]": [tokenizer.cls_token_id], "[SEP]": [tokenizer.sep_token_id]}
    assert {t["content"]: t["id"] for t in spec["added_tokens"]}["[MASK]"] == tokenizer.mask_token_id


@pytest.mark.slow
def test_cased_mbert_stays_cased_after_trim_save_and_reload(mbert):
    tokenizer = mbert.after
    assert tokenizer.init_kwargs.get("do_lower_case") is False
    assert tokenizer.tokenize("Paris")[0][0] == "P"


@pytest.mark.slow
def test_truncation_is_off_and_padding_uses_the_new_pad_id(xlmr_real):
    spec = json.loads((xlmr_real.out / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["truncation"] is None
    assert spec["padding"]["pad_id"] == xlmr_real.after.pad_token_id == 1


def test_fill_mask_pipeline_runs(trimmed):
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(trimmed.out), tokenizer=str(trimmed.out))
    mask = fill.tokenizer.mask_token
    predictions = fill(f"Le chat {mask} sur le tapis.", top_k=3)
    assert len(predictions) == 3 and all(0 <= p["token"] < len(trimmed.old_ids) for p in predictions)


# ---------------------------------------------------------------------------------------------
# Legacy files


@pytest.mark.parametrize("kind", ["tiny_bert", pytest.param("mbert", marks=pytest.mark.slow)])
def test_vocab_txt_agrees_with_tokenizer_json(request, kind):
    t = request.getfixturevalue(kind)
    lines = (t.out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert lines == vocab_in_id_order(t.after)


@pytest.mark.parametrize("kind", ["tiny_bert", pytest.param("mbert", marks=pytest.mark.slow)])
def test_vocab_txt_alone_tokenizes_like_tokenizer_json(request, tmp_path, kind):
    from transformers import AutoTokenizer

    t = request.getfixturevalue(kind)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(t.out / name, tmp_path / name)
    legacy, fast = AutoTokenizer.from_pretrained(tmp_path), t.after
    for text in t.covered:
        assert legacy(text)["input_ids"] == fast(text)["input_ids"]


@pytest.mark.slow
def test_trimmed_sentencepiece_model_keeps_the_fairseq_offset(tmp_path, sample_files):
    """XLM-R's sentencepiece.bpe.model: spm ids are the Hugging Face ids minus one."""
    import io

    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    from polyglot_distil.models.smoke import build_smoke_model
    from polyglot_distil.vocab.trim import trim

    lines = [line for f in sample_files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model_file, vocab_size=600,
                                   model_type="unigram", normalization_rule_name="identity", minloglevel=2)
    source_spm = spm.SentencePieceProcessor(model_proto=model_file.getvalue())
    pieces = [(source_spm.id_to_piece(i), source_spm.get_score(i)) for i in range(3, source_spm.get_piece_size())]
    hf = XLMRobertaTokenizer(vocab=[("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces,
                                    ("<mask>", 0.0)])
    hf.save_pretrained(tmp_path / "hf")
    source = build_smoke_model(tmp_path / "source", "xlmr", tokenizer_json=tmp_path / "hf" / "tokenizer.json")
    (source / "sentencepiece.bpe.model").write_bytes(model_file.getvalue())
    counts = count_corpora(str(source), {"en": parse_sources([str(EN_FR[0])])}, show_progress=False)
    trim(str(source), counts, ["en"], Rules(min_count=3), tmp_path / "out", log=lambda *_: None)

    trimmed_spm = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "sentencepiece.bpe.model"))
    tokenizer = load_tokenizer(tmp_path / "out")
    vocab = vocab_in_id_order(tokenizer)
    assert trimmed_spm.get_piece_size() == len(vocab) - 2
    assert [trimmed_spm.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert all(trimmed_spm.id_to_piece(h - 1) == vocab[h] for h in range(4, len(vocab) - 1))
    spec = json.loads((tmp_path / "out" / "tokenizer.json").read_text(encoding="utf-8"))
    assert all(trimmed_spm.get_score(h - 1) == pytest.approx(spec["model"]["vocab"][h][1])
               for h in range(4, len(vocab) - 1))
    source_tokenizer, agreeing = load_tokenizer(source), 0
    for text in lines_of([EN_FR[0]], 100):  # on covered text where source spm and tokenizer.json agree
        hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        source_ids = source_tokenizer(text, add_special_tokens=False)["input_ids"]
        if [i + 1 for i in source_spm.encode(text)] == source_ids and 3 not in hf_ids:
            assert [i + 1 for i in trimmed_spm.encode(text)] == hf_ids
            agreeing += 1
    assert agreeing >= 20


# ---------------------------------------------------------------------------------------------
# Heads, dtype, report and card


@pytest.mark.slow
@pytest.mark.parametrize("head, auto_class", [
    ("base", "AutoModel"), ("sequence-classification", "AutoModelForSequenceClassification"),
    ("token-classification", "AutoModelForTokenClassification"),
    ("question-answering", "AutoModelForQuestionAnswering")])
def test_every_head_is_kept(tmp_path, sample_files, head, auto_class):
    import transformers

    from polyglot_distil.models.smoke import build_smoke_model
    from polyglot_distil.vocab.trim import trim

    source = build_smoke_model(tmp_path / "source", "bert", texts=sample_files, vocab_size=400, num_layers=1,
                               head=head, num_labels=2 if head == "question-answering" else 3)
    counts = count_corpora(str(source), {"en": parse_sources([str(EN_FR[0])])}, show_progress=False)
    report = trim(str(source), counts, ["en"], Rules(), tmp_path / "out",
                  verify_texts={"en": lines_of([EN_FR[0]], 30)}, log=lambda *_: None)
    model_class = getattr(transformers, auto_class)
    before, after = model_class.from_pretrained(source), model_class.from_pretrained(tmp_path / "out")
    assert type(after) is type(before)
    body = {n: p for n, p in before.state_dict().items() if "word_embeddings" not in n}
    assert all(torch.equal(p, after.state_dict()[n]) for n, p in body.items())
    assert report["verify"]["en"]["compared"] > 0 and report["verify"]["en"]["passed"]


@pytest.mark.slow
def test_an_untied_decoder_is_reindexed_on_its_own(tmp_path, tiny_bert_dir):
    from transformers import AutoConfig, AutoModelForMaskedLM

    from polyglot_distil.vocab.trim import trim

    source = tmp_path / "untied"
    shutil.copytree(tiny_bert_dir, source)
    config = AutoConfig.from_pretrained(source, tie_word_embeddings=False)
    torch.manual_seed(2)
    AutoModelForMaskedLM.from_config(config).save_pretrained(source)
    counts = count_corpora(str(source), {"en": parse_sources([str(EN_FR[0])])}, show_progress=False)
    report = trim(str(source), counts, ["en"], Rules(), tmp_path / "out", log=lambda *_: None,
                  verify_texts={"en": lines_of([EN_FR[0]], 30)})
    before, after = AutoModelForMaskedLM.from_pretrained(source), AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    kept = torch.as_tensor(report["old_ids"])
    assert after.get_output_embeddings().weight is not after.get_input_embeddings().weight
    assert torch.equal(after.get_output_embeddings().weight, before.get_output_embeddings().weight[kept])
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight[kept])
    assert report["verify"]["en"]["passed"]


def test_the_source_dtype_is_kept_in_safetensors(tmp_path, tiny_bert_dir):
    from safetensors import safe_open
    from transformers import AutoModelForMaskedLM

    from polyglot_distil.vocab.trim import trim

    source = tmp_path / "fp16"
    shutil.copytree(tiny_bert_dir, source)
    AutoModelForMaskedLM.from_pretrained(source).half().save_pretrained(source)
    counts = count_corpora(str(source), {"en": parse_sources([str(EN_FR[0])])}, show_progress=False)
    trim(str(source), counts, ["en"], Rules(), tmp_path / "out", log=lambda *_: None)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}


@pytest.mark.slow
def test_report_has_old_ids_parameters_and_kept_tokens_per_language_and_rule(mbert):
    report = mbert.report
    assert len(report["old_ids"]) == report["vocab_size_after"] and report["old_ids"] == sorted(report["old_ids"])
    assert report["params_after"] < report["params_before"]
    assert report["params_before"] - report["params_after"] == (report["vocab_params_before"]
                                                                - report["vocab_params_after"])
    assert set(report["selection"]["languages"]) == {"en", "fr"}
    assert report["selection"]["languages"]["en"]["by_rule"]["min_line_share"] > 1000
    assert report["legacy_files"] == ["vocab.txt"]


@pytest.mark.slow
def test_model_card_tabulates_the_report(mbert):
    card = (mbert.out / "README.md").read_text(encoding="utf-8")
    report = mbert.report
    assert f"| parameters | {report['params_before']:,} | {report['params_after']:,} |" in card
    assert f"| vocabulary (tokenizer) | {report['vocab_size_before']:,} | {report['vocab_size_after']:,} |" in card
    assert f"| embedding rows | {report['embedding_rows_before']:,} | {report['vocab_size_after']:,} |" in card
    assert "embedding share" in card and "folder on disk" in card


# ---------------------------------------------------------------------------------------------
# Command line and bad input


@pytest.fixture(scope="module")
def bert_counts(tmp_path_factory, tiny_bert_dir) -> Path:
    path = tmp_path_factory.mktemp("counts") / "bert.parquet"
    languages = {"en": parse_sources([str(EN_FR[0])]), "fr": parse_sources([str(EN_FR[1])])}
    write_counts(count_corpora(str(tiny_bert_dir), languages, show_progress=False), path)
    return path


@pytest.mark.slow
def test_cli_trims_and_verifies_on_the_counted_corpus(tmp_path, tiny_bert_dir, bert_counts, capsys):
    out = tmp_path / "out"
    code = run_cli("trim", "--model", tiny_bert_dir, "--counts", bert_counts, "--langs", "en,fr", "--min-count", "2",
                   "--keep", "[unused-not-there]", "--verify-lines", "20", "--out", out, "--no-progress")
    captured = capsys.readouterr()
    assert code == 0
    assert "keep-list token '[unused-not-there]' is not in the vocabulary" in captured.err
    report = json.loads((out / "trim_report.json").read_text(encoding="utf-8"))
    assert report["verify"]["fr"]["texts"] == 20 and report["verify"]["fr"]["passed"]


def trim_error(capsys, *args) -> str:
    code = run_cli("trim", *args, "--no-progress")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_an_unsupported_tokenizer_type_names_the_supported_ones(tmp_path, bert_counts, capsys):
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(lines_of([EN_FR[0]], 50), trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(tmp_path / "wordlevel")
    err = trim_error(capsys, "--model", tmp_path / "wordlevel", "--counts", bert_counts, "--langs", "en",
                     "--out", tmp_path / "out")
    assert "its tokenizer is WordLevel" in err and "WordPiece" in err and "Unigram" in err and "BPE" in err
    assert not (tmp_path / "out").exists()


def test_counts_from_another_tokenizer_are_refused(tmp_path, tiny_xlmr_dir, bert_counts, capsys):
    err = trim_error(capsys, "--model", tiny_xlmr_dir, "--counts", bert_counts, "--langs", "en",
                     "--out", tmp_path / "out")
    assert "count again with --model" in err
    assert not (tmp_path / "out").exists()


def test_a_language_absent_from_the_counts_is_refused(tmp_path, tiny_bert_dir, bert_counts, capsys):
    err = trim_error(capsys, "--model", tiny_bert_dir, "--counts", bert_counts, "--langs", "en,sw",
                     "--out", tmp_path / "out")
    assert "'sw' is not in" in err and "en, fr" in err


def test_rules_keeping_only_specials_are_refused(tmp_path, tiny_bert_dir, bert_counts, capsys):
    err = trim_error(capsys, "--model", tiny_bert_dir, "--counts", bert_counts, "--langs", "en",
                     "--min-count", "1000000", "--out", tmp_path / "out")
    assert "keep no token of en beyond the special tokens" in err
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_kept_without_overwrite(tmp_path, tiny_bert_dir, bert_counts, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    err = trim_error(capsys, "--model", tiny_bert_dir, "--counts", bert_counts, "--langs", "en", "--out", out)
    assert "--overwrite" in err and (out / "mine.txt").read_text() == "keep me"


def test_a_verification_failure_writes_no_folder(tmp_path, tiny_bert_dir, bert_counts, capsys, monkeypatch):
    import polyglot_distil.vocab.trim as trim_stage
    import polyglot_distil.vocab.verify as verify

    def broken(*args, **kwargs):
        return {"en": verify.LanguageCheck(texts=1, covered=1, compared=1, differing=1, max_hidden_diff=1e-7)}

    monkeypatch.setattr(trim_stage, "verify_equivalence", broken)
    code = run_cli("trim", "--model", tiny_bert_dir, "--counts", bert_counts, "--langs", "en",
                   "--verify-lines", "5", "--out", tmp_path / "out", "--no-progress")
    captured = capsys.readouterr()
    assert code == 2 and "differs from" in captured.err and "was not written" in captured.err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    # the quick verification's table, which says where the trim differed, comes before the error
    assert captured.out.splitlines() == verify.verify_table(broken()).splitlines()
    assert captured.out.splitlines()[-1].startswith("en ") and "DIFFER" in captured.out


def test_unreadable_counted_sources_ask_for_verify_lang(tmp_path, tiny_bert_dir, capsys):
    counts = _counts_with_missing_source(tmp_path, tiny_bert_dir)
    err = trim_error(capsys, "--model", tiny_bert_dir, "--counts", counts, "--langs", "en", "--out", tmp_path / "out")
    assert "gone.txt" in err and "--verify-text" in err and "--no-verify" in err


def _counts_with_missing_source(tmp_path: Path, tokenizer_dir: Path) -> Path:
    text = tmp_path / "gone.txt"
    text.write_text("\n".join(lines_of([EN_FR[0]], 50)), encoding="utf-8")
    counts = count_corpora(str(tokenizer_dir), {"en": parse_sources([str(text)])}, show_progress=False)
    text.unlink()
    return write_counts(counts, tmp_path / "counts.parquet")


# ---------------------------------------------------------------------------------------------
# Every tensor of the source survives (a pooler and an NSP head included)


def pretraining_checkpoint(tiny_bert_dir: Path, folder: Path, architecture: str) -> Path:
    """The tiny BERT as a pre-training checkpoint (pooler and next-sentence head, random), its
    config naming `architecture`: "BertForMaskedLM" is how the real bert-base-multilingual-cased
    checkpoint is labelled although it carries both."""
    from transformers import AutoConfig, BertForPreTraining

    config = AutoConfig.from_pretrained(tiny_bert_dir)
    torch.manual_seed(3)
    model = BertForPreTraining(config)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    model.save_pretrained(folder)
    spec = json.loads((folder / "config.json").read_text(encoding="utf-8"))  # save_pretrained names its own class
    spec["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(spec), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tiny_bert_dir / name).is_file():
            shutil.copyfile(tiny_bert_dir / name, folder / name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["BertForMaskedLM", "BertForPreTraining"])
def test_every_tensor_of_the_source_is_kept_and_the_pooler_verified(tmp_path, tiny_bert_dir, architecture):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from polyglot_distil.vocab.trim import trim

    source = pretraining_checkpoint(tiny_bert_dir, tmp_path / "source", architecture)
    counts = count_corpora(str(source), {"en": parse_sources([str(EN_FR[0])])}, show_progress=False)
    texts = {"en": lines_of([EN_FR[0]], 40)}
    report = trim(str(source), counts, ["en"], Rules(min_count=2), tmp_path / "out", verify_texts=texts,
                  show_progress=False, log=lambda *_: None)
    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(after) == set(before)  # pooler and cls.seq_relationship included
    old_ids = torch.as_tensor(report["old_ids"])
    rows = before["bert.embeddings.word_embeddings.weight"].shape[0]
    for name, tensor in before.items():
        expected = tensor.index_select(0, old_ids) if tensor.shape[0] == rows else tensor
        assert torch.equal(after[name], expected), name
    if architecture == "BertForMaskedLM":
        assert "bert.pooler.dense.weight" in report["carried_tensors"]
    # the built-in verify compared the pooler output, and found it equal
    assert report["verify"]["en"]["max_pooler_diff"] == 0.0 and report["verify"]["en"]["compared"] > 10
    original, trimmed_model = (AutoModel.from_pretrained(p, attn_implementation="eager").eval()
                               for p in (source, tmp_path / "out"))
    ids_before = load_tokenizer(source)(texts["en"][0], return_tensors="pt")
    ids_after = load_tokenizer(tmp_path / "out")(texts["en"][0], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(original(**ids_before).pooler_output, trimmed_model(**ids_after).pooler_output)
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "the pooler output" in card and "MLM logits" in card


@pytest.mark.slow
def test_verify_fails_when_the_pooler_differs(tmp_path, tiny_bert_dir):
    """The pooler comparison is not vacuous: a trimmed folder whose pooler was changed fails."""
    from safetensors.torch import load_file, save_file

    from polyglot_distil.vocab.trim import trim
    from polyglot_distil.vocab.verify import verify_equivalence

    source = pretraining_checkpoint(tiny_bert_dir, tmp_path / "source", "BertForMaskedLM")
    counts = count_corpora(str(source), {"en": parse_sources([str(EN_FR[0])])}, show_progress=False)
    trim(str(source), counts, ["en"], Rules(min_count=2), tmp_path / "out", show_progress=False, log=lambda *_: None)
    weights = load_file(tmp_path / "out" / "model.safetensors")
    weights["bert.pooler.dense.bias"] = weights["bert.pooler.dense.bias"] + 1e-3
    save_file(weights, tmp_path / "out" / "model.safetensors", metadata={"format": "pt"})
    results = verify_equivalence(str(source), tmp_path / "out", {"en": lines_of([EN_FR[0]], 20)}, show_progress=False)
    assert results["en"].max_pooler_diff > 0 and not results["en"].passed
    assert results["en"].max_hidden_diff == 0  # only the pooler changed


def test_the_trim_removes_exactly_the_dropped_rows(tiny_bert):
    """Parameters fall by the removed rows of the embedding (the decoder is tied) and of the MLM
    bias, and the weights on disk by those rows' bytes (safetensors' header aside)."""
    report = tiny_bert.report
    removed = report["vocab_size_before"] - report["vocab_size_after"]
    hidden = json.loads((tiny_bert.out / "config.json").read_text())["hidden_size"]
    assert report["params_before"] - report["params_after"] == removed * (hidden + 1)
    size = (tiny_bert.source / "model.safetensors").stat().st_size - (tiny_bert.out / "model.safetensors").stat().st_size
    assert abs(size - 4 * removed * (hidden + 1)) < 2048  # float32; the header's length changes a little


@pytest.mark.slow
def test_a_pooler_less_sentence_transformer_loads_silently_and_the_same(tmp_path, tiny_bert_dir):
    """E5 never had a pooler: sentence-transformers must not report one as missing."""
    st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the test extra)")
    from transformers import BertModel

    from polyglot_distil.models.checkpoint import load_without_pooler
    from polyglot_distil.models.loading import load_tokenizer

    folder = tmp_path / "e5-like"  # weights without a pooler, mean pooling, the files as E5's hub folder has them
    model = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False)
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_bert_dir)).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": model.config.hidden_size, "pooling_mode_mean_tokens": True}))
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": false}')

    with transformers_log() as messages:
        before = st.SentenceTransformer(str(folder), device="cpu").encode(["le chat", "the cat sat"])
    assert any("pooler" in m for m in messages)  # what an embedding user saw
    assert load_without_pooler(folder)
    with transformers_log() as messages:
        after = st.SentenceTransformer(str(folder), device="cpu").encode(["le chat", "the cat sat"])
    assert [m for m in messages if "pooler" in m] == []
    assert np.array_equal(before, after)
    assert json.loads((folder / "sentence_bert_config.json").read_text())["model_args"] == {"add_pooling_layer": False}
    assert not load_without_pooler(folder)  # once is enough


def test_a_checkpoint_with_a_pooler_keeps_its_settings(tmp_path, tiny_bert_dir):
    from transformers import BertModel

    from polyglot_distil.models.checkpoint import load_without_pooler

    folder = tmp_path / "pooled"
    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(folder)  # a pooler, trained or not: it is saved
    assert not load_without_pooler(folder)  # not a sentence-transformers folder
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    assert not load_without_pooler(folder)
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == {"max_seq_length": 128}
