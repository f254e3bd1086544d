"""`trim` on BPE tokenizers, exactly: byte-level BPE (RoBERTa-style, and Qwen-style with
`ignore_merges`) and SentencePiece-style BPE with byte fallback (around a ModernBERT and a Gemma 3
body), each trained here on multilingual text (tests/vocab_models.py). The kept vocabulary is closed
under merges, the remaining merges keep their order, the byte alphabet / byte pieces are kept; on
covered text the tokens are the original's (renumbered) and the outputs bitwise the original's; on
any text, no `<unk>` appears where the original had none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vocab_models import BYTE_PIECES, byte_level_bpe, random_texts, random_unicode, save_tokenizer, sentencepiece_bpe, \
    swahili, tiny_model, training_lines, trim_to_swahili

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (model, tokenizer flavour)
KINDS = {"roberta": "byte_level", "qwen2": "qwen", "modernbert": "sentencepiece", "gemma3": "sentencepiece"}


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return training_lines()


class Flavours(dict):
    """Each flavour's tokenizer, trained on first use (the fast loop trains only Qwen's)."""

    def __init__(self, lines: list[str]):
        super().__init__()
        self.lines = lines

    def __missing__(self, flavour: str):
        train = {"byte_level": lambda: byte_level_bpe(self.lines), "qwen": lambda: byte_level_bpe(self.lines, qwen=True),
                 "sentencepiece": lambda: sentencepiece_bpe(self.lines)}[flavour]
        self[flavour] = tokenizer = train()
        return tokenizer


@pytest.fixture(scope="module")
def tokenizers_by_flavour(lines) -> Flavours:
    return Flavours(lines)


class BpeTrim:
    """A source folder, its trim to Swahili (counted on 400 lines the tokenizer was not trained on)
    and both tokenizers."""

    def __init__(self, kind: str, source: Path, out: Path, report: dict):
        from polyglot_distil.models.loading import load_tokenizer

        self.kind, self.source, self.out, self.report = kind, source, out, report
        self.old_ids = np.asarray(report["old_ids"], dtype=np.int64)
        self.before, self.after = load_tokenizer(source), load_tokenizer(out)
        self.id_map = np.full(len(self.before), -1, dtype=np.int64)
        self.id_map[self.old_ids] = np.arange(len(self.old_ids))

    def ids(self, text: str) -> tuple[list[int], list[int]]:
        return (self.before.backend_tokenizer.encode(text, add_special_tokens=False).ids,
                self.after.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def covers(self, ids_before: list[int]) -> bool:
        return bool((self.id_map[ids_before] >= 0).all())


def make_bpe_trim(root: Path, kind: str, tokenizer, source: Path | None = None) -> BpeTrim:
    """Build a tiny `kind` model around `tokenizer` (or take the folder `source`) and trim it to
    Swahili (`trim_to_swahili`, verified on 60 lines)."""
    if source is None:
        source = root / "source"
        save_tokenizer(tokenizer, source)
        tiny_model(kind, tokenizer.get_vocab_size(), source)
    return BpeTrim(kind, source, root / "trimmed", trim_to_swahili(root, source, verify_lines=60))


# Every flavour in the whole suite; the fast loop (pytest -m "not slow") has the units of
# tests/test_trim_tokenizer.py (merges, closure, byte alphabets, dropout) and trains none.
@pytest.fixture(scope="module", params=[pytest.param(k, marks=pytest.mark.slow) for k in KINDS])
def bpe_trim(request, tmp_path_factory, tokenizers_by_flavour) -> BpeTrim:
    kind = request.param
    return make_bpe_trim(tmp_path_factory.mktemp(f"bpe_{kind}"), kind, tokenizers_by_flavour[KINDS[kind]])


# ---------------------------------------------------------------------------------------------
# The trim itself


def test_builtin_verify_passed_on_covered_swahili(bpe_trim):
    result = bpe_trim.report["verify"]["sw"]
    assert result["passed"] and result["compared"] >= 30 and result["max_hidden_diff"] == 0
    assert result["max_logit_diff"] == 0  # every model here has an output head
    assert bpe_trim.report["tokenizer_model"] == "BPE"
    assert bpe_trim.report["vocab_size_after"] < bpe_trim.report["vocab_size_before"] / 2


def test_kept_vocabulary_is_closed_under_merges_and_merges_keep_their_order(bpe_trim):
    from polyglot_distil.vocab.trim_tokenizer import bpe_merges, merge_result

    before = json.loads(bpe_trim.before.backend_tokenizer.to_str())["model"]
    after = json.loads(bpe_trim.after.backend_tokenizer.to_str())["model"]
    kept = after["vocab"]
    old_merges = bpe_merges(before)
    expected = [m for m in old_merges if m[0] in kept and m[1] in kept and merge_result(before, *m) in kept]
    assert bpe_merges(after) == expected and 0 < len(expected) < len(old_merges)
    for left, right in old_merges:  # every merge that makes a kept token has both its parts kept
        if merge_result(before, left, right) in kept:
            assert left in kept and right in kept, (left, right)
    assert bpe_trim.report["bpe_merges"] == {"before": len(old_merges), "after": len(expected)}
    ancestors = bpe_trim.report["selection"]["always_kept"]["merge_ancestors"]["added"]
    assert ancestors > 0 and bpe_trim.report["vocab_size_after"] == bpe_trim.report["selection"]["kept"]


def test_byte_alphabet_or_byte_pieces_are_always_kept(bpe_trim):
    from tokenizers import pre_tokenizers

    kept = set(bpe_trim.after.get_vocab())
    if KINDS[bpe_trim.kind] == "sentencepiece":
        assert set(BYTE_PIECES) <= kept and bpe_trim.report["selection"]["always_kept"]["byte_fallback"]["tokens"] == 256
        assert json.loads(bpe_trim.after.backend_tokenizer.to_str())["model"]["byte_fallback"] is True
    else:
        assert set(pre_tokenizers.ByteLevel.alphabet()) <= kept
        assert bpe_trim.report["selection"]["always_kept"]["byte_alphabet"]["tokens"] == 256


@pytest.mark.slow
def test_a_bpe_with_dropout_is_refused_in_one_line(tokenizers_by_flavour):
    """Dropout skips merges at random: no trim can reproduce its tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from polyglot_distil.errors import UserError
    from polyglot_distil.vocab.trim_tokenizer import tokenizer_model_type

    spec = json.loads(tokenizers_by_flavour["qwen"].to_str())
    spec["model"]["dropout"] = 0.1
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
    with pytest.raises(UserError, match="has dropout"):
        tokenizer_model_type(tokenizer, "model")


# ---------------------------------------------------------------------------------------------
# Property tests: many random texts


def test_random_covered_texts_give_the_original_ids_renumbered(bpe_trim):
    texts = random_texts(swahili(3000, 400), 1500, seed=1) + random_texts(swahili(9000, 400), 500, seed=2)
    covered = 0
    for text in texts:
        old, new = bpe_trim.ids(text)
        if bpe_trim.covers(old):
            covered += 1
            assert bpe_trim.old_ids[new].tolist() == old, text
    assert covered >= 800  # enough texts were covered to prove something


def test_uncovered_text_never_becomes_unknown_where_the_original_did_not(bpe_trim):
    texts = random_unicode(400, seed=3) + random_texts(training_lines(200), 600, seed=4)
    unk_before, unk_after = bpe_trim.before.unk_token_id, bpe_trim.after.unk_token_id
    uncovered = 0
    for text in texts:
        old, new = bpe_trim.ids(text)
        uncovered += not bpe_trim.covers(old)
        if unk_before not in old:
            assert unk_after not in new, text
        assert bpe_trim.after.decode(new) == bpe_trim.before.decode(old)  # same text back
    assert uncovered >= 500


@pytest.mark.slow
def test_without_the_merge_closure_verify_catches_the_difference(tmp_path, tokenizers_by_flavour, monkeypatch):
    """The closure is what makes the trim exact: without it, intermediate tokens (never counted, as
    text never shows them) are dropped with their merges, and the built-in verify refuses to write."""
    from polyglot_distil.vocab import trim as trim_module
    from polyglot_distil.vocab.verify import EquivalenceError

    monkeypatch.setattr(trim_module, "close_under_merges", lambda tokenizer, kept: (kept, 0))
    with pytest.raises(EquivalenceError, match="differs"):
        make_bpe_trim(tmp_path, "roberta", tokenizers_by_flavour["byte_level"])
    assert not (tmp_path / "trimmed").exists()


# ---------------------------------------------------------------------------------------------
# Loading back


def test_legacy_vocab_json_and_merges_txt_tokenize_like_tokenizer_json(bpe_trim):
    from tokenizers import Tokenizer, models

    assert bpe_trim.report["legacy_files"] == ["vocab.json", "merges.txt"]
    spec = json.loads(bpe_trim.after.backend_tokenizer.to_str())
    legacy = Tokenizer(models.BPE.from_file(str(bpe_trim.out / "vocab.json"), str(bpe_trim.out / "merges.txt"),
                                            unk_token=spec["model"]["unk_token"],
                                            byte_fallback=spec["model"]["byte_fallback"],
                                            ignore_merges=spec["model"]["ignore_merges"],
                                            fuse_unk=spec["model"]["fuse_unk"]))
    legacy.pre_tokenizer = bpe_trim.after.backend_tokenizer.pre_tokenizer
    for text in swahili(5000, 100) + random_unicode(50, seed=5):
        assert legacy.encode(text).ids == bpe_trim.ids(text)[1], text


def test_trimmed_folder_loads_with_auto_classes_and_no_size_mismatch(bpe_trim):
    import transformers

    config = transformers.AutoConfig.from_pretrained(bpe_trim.out)
    model_class = getattr(transformers, bpe_trim.report["architecture"])
    model, info = model_class.from_pretrained(bpe_trim.out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.get_input_embeddings().weight.shape[0] == config.vocab_size == len(bpe_trim.after)
    assert len(transformers.AutoTokenizer.from_pretrained(bpe_trim.out)) == config.vocab_size


# ---------------------------------------------------------------------------------------------
# A Gemma-style folder with its SentencePiece BPE model file


@pytest.fixture(scope="module")
def gemma_spm_dir(tmp_path_factory) -> Path:
    """A tiny Gemma3ForCausalLM with `tokenizer.model`, a SentencePiece BPE (byte fallback, no dummy
    prefix, no normalisation, as Gemma's) trained with `sentencepiece`, and the tokenizer.json
    transformers converts from it (with `protobuf`)."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("gemma_spm")
    text = folder / "train.txt"
    text.write_text("\n".join(training_lines(300)) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=2000,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                                   normalization_rule_name="identity", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                   num_threads=1, minloglevel=2)
    text.unlink()
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_model("gemma3", len(tokenizer), folder)
    return folder


@pytest.mark.slow
def test_gemma_tokenizer_model_is_trimmed_and_tokenizes_like_the_trimmed_tokenizer_json(gemma_spm_dir, tmp_path):
    import sentencepiece as spm

    trimmed = make_bpe_trim(tmp_path, "gemma3", None, source=gemma_spm_dir)
    assert trimmed.report["legacy_files"] == ["vocab.json", "merges.txt", "tokenizer.model"]
    assert trimmed.report["verify"]["sw"]["passed"]
    before = spm.SentencePieceProcessor(model_file=str(gemma_spm_dir / "tokenizer.model"))
    after = spm.SentencePieceProcessor(model_file=str(trimmed.out / "tokenizer.model"))
    assert after.get_piece_size() == len(trimmed.old_ids) - (len(trimmed.before) - before.get_piece_size())
    assert [after.id_to_piece(i) for i in range(after.get_piece_size()) if after.is_byte(i)] == BYTE_PIECES
    covered = 0
    for text in swahili(5000, 200) + random_unicode(30, seed=6):
        old, new = trimmed.ids(text)
        assert after.encode(text) == new, text  # the legacy file agrees with tokenizer.json everywhere
        if trimmed.covers(old):
            covered += 1
            assert before.encode(text) == old and trimmed.old_ids[new].tolist() == old
    assert covered >= 20


# ---------------------------------------------------------------------------------------------
# Word-boundary markers on the merges: a continuing-subword prefix and an end-of-word suffix


@pytest.mark.slow
def test_prefix_and_suffix_bpe_trims_exactly(lines):
    """A BPE with `##` on word-inner pieces and `</w>` on word ends (its merges drop the right
    part's prefix): trimmed to the tokens seen twice in 300 Swahili lines, random covered texts keep their
    tokens (renumbered)."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from polyglot_distil.vocab.select import id_map_for
    from polyglot_distil.vocab.trim_tokenizer import close_under_merges, trim_tokenizer

    backend = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(lines, trainers.BpeTrainer(  # each character comes in 4 forms: fewer of them
        vocab_size=3000, special_tokens=["[UNK]"], continuing_subword_prefix="##", end_of_word_suffix="</w>",
        limit_alphabet=150, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    counts = Counter(i for line in swahili(3000, 300) for i in backend.encode(line).ids)
    seen = sorted({i for i, n in counts.items() if n >= 2} | {0})
    kept, added = close_under_merges(tokenizer, np.asarray(seen, dtype=np.int64))
    assert added > 0 and len(json.loads(backend.to_str())["model"]["merges"]) > 1000
    trimmed = trim_tokenizer(tokenizer, kept).backend_tokenizer
    id_map = id_map_for(kept, backend.get_vocab_size())
    covered = 0
    for text in random_texts(swahili(3000, 300), 1000, seed=7):
        old = backend.encode(text).ids
        if (id_map[old] >= 0).all():
            covered += 1
            assert kept[trimmed.encode(text).ids].tolist() == old, text
    assert covered >= 500


# ---------------------------------------------------------------------------------------------
# The worked example of docs/trimming.md, on an EmbeddingGemma-style model


def docs_example() -> tuple[list[str], str]:
    """The bash commands and the Python block of docs/trimming.md's BPE embedding example."""
    import re

    from conftest import ROOT

    page = (ROOT / "docs" / "trimming.md").read_text(encoding="utf-8")
    section = page.split("\n## Trim a BPE embedding model for one language\n", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line.strip() for line in re.sub(r"\\\n\s*", " ", bash).splitlines() if line.strip()]
    return commands, re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.slow
def test_docs_bpe_embedding_example_runs_and_encodes_as_the_source(tmp_path, monkeypatch, lines):
    """The page's commands, run as written with the hub model replaced by a tiny EmbeddingGemma-
    style sentence-transformer; its Python block then encodes, and on covered Swahili the trimmed
    model's sentence embeddings are the source's, bit for bit."""
    import shlex

    st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the test extra)")
    from conftest import ROOT, run_cli
    from vocab_models import embedding_gemma_style

    source = tmp_path / "embeddinggemma"
    embedding_gemma_style(source, lines)
    (tmp_path / "corpora").symlink_to(ROOT / "corpora")
    monkeypatch.chdir(tmp_path)
    commands, snippet = docs_example()
    assert len(commands) == 2 and all(c.startswith("polyglot-distil ") for c in commands)
    for command in commands:
        assert run_cli(*shlex.split(command.replace("google/embeddinggemma-300m", str(source)))[1:]) == 0
    namespace: dict = {}
    exec(compile(snippet, "docs/trimming.md (BPE embedding example)", "exec"), namespace)
    assert namespace["embeddings"].shape == (2, 32)

    report = json.loads((tmp_path / "models" / "embeddinggemma-sw" / "trim_report.json").read_text())
    assert report["tokenizer_model"] == "BPE" and "modules.json" in report["sentence_transformers"]
    assert report["verify"]["sw"]["passed"] and report["params_after"] < report["params_before"] / 2
    before, after = st.SentenceTransformer(str(source)), namespace["model"]
    kept = set(report["old_ids"])
    texts = [t for t in swahili(5000, 300) if set(before.tokenize([t])["input_ids"][0].tolist()) <= kept][:16]
    assert len(texts) >= 8
    assert np.array_equal(before.encode(texts, batch_size=16), after.encode(texts, batch_size=16))
