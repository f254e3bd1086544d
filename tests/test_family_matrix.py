"""The family matrix: a tiny random-weight model of every encoder family polyglot-distil knows
(models/families.py), built here from transformers' configuration classes around the real mBERT
or XLM-R tokenizer from ../shared/data, through every stage on the real code paths: count, trim,
verify, student (layer copy, --init-layers, the SVD and importance inits), phase 1 with every
recipe that applies, search-map, finetune, phase 2 (LT-SFT, teacher cache), apply-diff, eval
xnli, quantize, export onnx; most of them through `run` (the pipeline from one config). A few
steps each: it proves that each stage runs and writes what the next one reads, not what the
numbers are. Where a recipe or an init cannot apply, the test
asserts the one-line refusal instead. docs/families.md's table is this test's cells.

Adding a family: its entry in models/families.py, its row in MATRIX below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CORPORA, metrics_rows, run_cli, shared

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
NLI = CORPORA / "nli"
TEXT = {lang: CORPORA / lang / "sample.txt" for lang in ("en", "fr")}
LANGS = [arg for lang, path in TEXT.items() for arg in ("--lang", f"{lang}={path}")]
SHORT = ["--steps", 2, "--batch-size", 2, "--block-size", 24, "--heldout-blocks", 2, "--max-lines", 30,
         "--no-progress"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=130)


def family_configs(vocab_size: int, ids: dict) -> dict:
    """family -> (configuration class's instance, masked-LM class name). Tiny: hidden
    32, 2 layers, 2 heads; each family's own features on (ALBERT/ELECTRA/RemBERT's narrower
    embeddings, DeBERTa's relative positions, ModernBERT's local + global layers)."""
    import transformers as t

    common = dict(vocab_size=vocab_size, **ids)
    return {
        "bert": (t.BertConfig(**TINY, **common), "BertForMaskedLM"),
        "xlm-roberta": (t.XLMRobertaConfig(**{**TINY, "max_position_embeddings": 132}, type_vocab_size=1, **common),
                        "XLMRobertaForMaskedLM"),
        "xlm-roberta-xl": (t.XLMRobertaXLConfig(**{**TINY, "max_position_embeddings": 132}, type_vocab_size=1,
                                                **common), "XLMRobertaXLForMaskedLM"),
        "distilbert": (t.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=130,
                                          **common), "DistilBertForMaskedLM"),
        "electra": (t.ElectraConfig(**TINY, embedding_size=24, **common), "ElectraForMaskedLM"),
        "albert": (t.AlbertConfig(**TINY, embedding_size=24, **common), "AlbertForMaskedLM"),
        "deberta-v2": (t.DebertaV2Config(**TINY, relative_attention=True, position_buckets=16,
                                         pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                         norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, **common),
                       "DebertaV2ForMaskedLM"),
        "modernbert": (t.ModernBertConfig(**TINY, global_attn_every_n_layers=2, local_attention=8, **common),
                       "ModernBertForMaskedLM"),
        "rembert": (t.RemBertConfig(**TINY, input_embedding_size=16, output_embedding_size=24, **common),
                    "RemBertForMaskedLM"),
    }


# the real tokenizer each family's model is built around (its checkpoints' own, or the nearest kind)
TOKENIZER = {"bert": "mbert", "distilbert": "mbert", "electra": "mbert", "xlm-roberta": "xlmr",
             "xlm-roberta-xl": "xlmr", "albert": "xlmr", "deberta-v2": "xlmr", "modernbert": "xlmr", "rembert": "xlmr"}
MATRIX = tuple(TOKENIZER)


@pytest.fixture(scope="module")
def real_tokenizers(tmp_path_factory, mbert_vocab_dir, xlmr_tokenizer_dir) -> dict:
    """The real mBERT and XLM-R tokenizers cut by the project's own count + trim to the tokens of
    the English, French and German samples (a few thousand rows instead of 120,000 and 250,000:
    every family's embeddings stay small), as {"mbert": folder, "xlmr": folder}."""
    out = tmp_path_factory.mktemp("real_tokenizers")
    folders = {}
    for name, source in (("mbert", mbert_vocab_dir), ("xlmr", xlmr_tokenizer_dir)):
        assert run_cli("count", "--model", source, *LANGS, "--lang", f"de={CORPORA / 'de' / 'sample.txt'}",
                       "--no-progress", "--out", out / f"{name}.parquet") == 0
        assert run_cli("trim", "--model", source, "--counts", out / f"{name}.parquet", "--langs", "en,fr,de",
                       "--min-count", 1, "--no-verify", "--no-progress", "--out", out / name) == 0
        folders[name] = out / name
    return folders


def build_family_model(folder: Path, family: str, tokenizers: dict) -> Path:
    """A tiny random-weight masked-LM of `family` around the (cut) real tokenizer it pairs with."""
    import shutil

    import torch
    import transformers
    from transformers import AutoTokenizer

    from polyglot_distil.models.loading import TOKENIZER_FILES
    from polyglot_distil.models.smoke import SMOKE_CARD

    source = tokenizers[TOKENIZER[family]]
    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
               eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id,
               sep_token_id=tokenizer.sep_token_id)
    config, class_name = family_configs(len(tokenizer), ids)[family]
    config.smoke_model = True
    config.id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    getattr(transformers, class_name)(config).save_pretrained(folder)
    (folder / "README.md").write_text(SMOKE_CARD, encoding="utf-8")
    return folder


RUN_CONFIG = """
run_dir: run
model: {model}
languages: {{source: en, target: fr}}
corpora: {{en: [{corpora}/en/sample.txt], fr: [{corpora}/fr/sample.txt]}}
task_data: {{train: {corpora}/nli/train-en.tsv, dev: {corpora}/nli/dev-en.tsv}}
eval_data: {corpora}/nli
stages: [count, trim, verify, search, student, general, finetune, task, eval]
count: {{no_progress: true}}
trim: {{min_count: 1, no_progress: true}}
verify: {{max_lines: 20, no_progress: true}}
student: {{layers: 1}}
general: {{steps: 2, batch_size: 2, block_size: 24, heldout_blocks: 2, max_lines: 30, log_every: 1, no_progress: true}}
finetune: {{epochs: 0.05, batch_size: 8, no_progress: true}}
task: {{full_epochs: 0.05, sparse_epochs: 0.05, batch_size: 8, log_every: 1, teacher_cache: cache,
       no_progress: true}}
eval: {{split: test, no_efficiency: true, no_progress: true}}
"""


def _refused(capsys, status: int, *words: str) -> None:
    """A one-line refusal (exit 2) that says `words`."""
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and all(w in err[0] for w in words), err


@pytest.mark.parametrize("family", MATRIX)
def test_every_stage_runs_on_every_family(tmp_path, family, real_tokenizers, capsys):
    from transformers import AutoConfig

    from polyglot_distil.models.families import FAMILIES, family_of

    built = build_family_model(tmp_path / "base", family, real_tokenizers)
    entry = FAMILIES[family]
    assert family_of(AutoConfig.from_pretrained(built)) is entry  # the registry knows the family by its model type

    # `run`: count, trim (to en+fr: the base also has German's tokens), verify, search-map, student (from
    # the searched layers), phase 1 (BiStil: hidden + attention maps), finetune, phase 2 (LT-SFT, the
    # teacher's outputs cached), eval xnli; every stage exits 0 and leaves its DONE.json
    (tmp_path / "run.yaml").write_text(RUN_CONFIG.format(model=built, corpora=CORPORA), encoding="utf-8")
    assert run_cli("run", tmp_path / "run.yaml") == 0
    run = tmp_path / "run"
    for stage in ("count", "trim", "verify", "search", "student", "general", "finetune", "task", "eval"):
        assert (run / stage / "DONE.json").is_file(), stage
    assert len(json.loads((run / "search" / "run" / "search.json").read_text())["tried"]) == 2
    assert {r["stage"] for r in metrics_rows(run / "task" / "run", "train")} == {"full", "sparse"}
    assert any((tmp_path / "cache").iterdir())
    report = json.loads((run / "eval" / "report" / "report.json").read_text())
    assert 0 <= report["results"]["fr"]["accuracy"]["model"] <= 1
    teacher, student, general = run / "trim" / "model", run / "student" / "model", run / "general" / "run" / "best"
    assert AutoConfig.from_pretrained(student).num_hidden_layers == 1
    capsys.readouterr()

    # student: --init-layers (ALBERT: refused, its one layer is shared), SVD, importance
    status = run_cli("student", "--teacher", teacher, "--layers", 1, "--init-layers", 1, "--out", tmp_path / "s-top")
    if entry.shared_layers:
        assert json.loads((student / "student.json").read_text())["init_layers"] is None
        _refused(capsys, status, "--init-layers", "shares one layer")
    else:
        assert status == 0 and json.loads((tmp_path / "s-top" / "student.json").read_text())["init_layers"] == [1]
    if family == "modernbert":  # per-layer lists follow the kept layers: layer 1 is a local-attention layer
        assert AutoConfig.from_pretrained(tmp_path / "s-top").layer_types == ["sliding_attention"]
    assert run_cli("student", "--teacher", teacher, "--layers", 1, "--hidden-size", 16, "--out",
                   tmp_path / "s-narrow") == 0
    status = run_cli("student", "--teacher", teacher, "--layers", 1, "--init", "importance", "--heads", 1,
                     "--importance-text", f"fr={TEXT['fr']}", "--importance-lines", 20, "--out", tmp_path / "s-impt")
    if entry.bert_layout:
        kept = json.loads((tmp_path / "s-impt" / "student.json").read_text())["kept"]
        assert status == 0 and len(kept["layers"]) == 1 and len(kept["layers"][0]["heads"]) == 1
    else:
        _refused(capsys, status, "--init importance knows BERT-layout layers")
        assert not (tmp_path / "s-impt").exists()

    # phase 1's other recipes: DistilBERT (logits, MLM, cosine), MiniLMv2 (q/k/v relations); a narrower
    # student (its hidden states through a learned projection)
    for recipe, model, extra in (("distilbert", student, []), ("minilm", student, []),
                                 ("narrow", tmp_path / "s-narrow", ["--attention-weight", 0])):
        assert run_cli("distil", "general", "--teacher", teacher, "--student", model, *LANGS, *SHORT,
                       *(["--recipe", recipe] if recipe != "narrow" else extra), "--log-every", 1,
                       "--out", tmp_path / recipe) == 0, recipe
        rows = metrics_rows(tmp_path / recipe, "train")
        assert len(rows) == 2 and all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows), (recipe, rows)

    # apply-diff: phase 1's model + phase 2's sparse diff; eval of the applied model against the task teacher
    task = run / "task" / "run"
    assert run_cli("apply-diff", "--student", general, "--diff", task / "sparse_diff", "--out", tmp_path / "applied") == 0
    assert run_cli("eval", "xnli", "--model", tmp_path / "applied", "--teacher", run / "finetune" / "run" / "best",
                   "--langs", "fr", "--data", NLI, "--split", "test", "--repeats", 1, "--no-progress",
                   "--out", tmp_path / "eval") == 0

    # deployment: int8 and ONNX (checked against PyTorch by the export itself)
    assert run_cli("quantize", "--model", task / "best", "--out", tmp_path / "int8") == 0
    assert run_cli("eval", "xnli", "--model", tmp_path / "int8", "--baseline", task / "best", "--langs", "fr",
                   "--data", NLI, "--split", "test", "--no-efficiency", "--no-progress",
                   "--out", tmp_path / "eval-int8") == 0
    assert run_cli("export", "onnx", "--model", task / "best", "--out", tmp_path / "onnx") == 0
