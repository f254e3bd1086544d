"""`polyglot-distil smoke-model`: a tiny random-weight model for offline trials and tests
(`polyglot_distil.models.smoke.build_smoke_model`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polyglot_distil.errors import UserError
from polyglot_distil.options import OVERWRITE, READS, SEED, WRITES, Command, like, setting


@dataclass(kw_only=True)
class SmokeModelSettings:
    family: str = setting("bert", choices=("bert", "xlmr"), help="model family (default bert)")
    tokenizer_text: list[str] = setting([], role=READS, nargs="*", help="text files to train the tokenizer on",
                                        renamed_from=("--texts",))
    vocab_file: str | None = setting(None, role=READS, help="use this WordPiece vocab.txt instead of training (bert)")
    tokenizer_json: str | None = setting(None, role=READS,
                                         help="use this Unigram tokenizer.json instead of training (xlmr)")
    vocab_size: int = setting(1000)
    hidden_size: int = setting(32)
    layers: int = setting(4)
    head: str = setting("masked-lm", choices=("base", "masked-lm", "sequence-classification", "token-classification",
                                              "question-answering"))
    seed: int = like(SEED)
    out: str = setting(role=WRITES, help="the model folder to write")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")


def smoke_model(settings: SmokeModelSettings) -> dict:
    from polyglot_distil.models.smoke import build_smoke_model
    from polyglot_distil.outputs import atomic_dir

    for f in [*settings.tokenizer_text, settings.vocab_file, settings.tokenizer_json]:
        if f and not Path(f).is_file():
            raise UserError(f"file not found: {f}")
    if not (settings.tokenizer_text or settings.vocab_file or settings.tokenizer_json):
        raise UserError("pass --tokenizer-text FILE... to train a tokenizer, or --vocab-file / --tokenizer-json")
    with atomic_dir(settings.out, settings.overwrite) as tmp:
        build_smoke_model(tmp, settings.family, texts=settings.tokenizer_text, vocab_file=settings.vocab_file,
                          tokenizer_json=settings.tokenizer_json, vocab_size=settings.vocab_size,
                          hidden_size=settings.hidden_size, num_layers=settings.layers, head=settings.head,
                          seed=settings.seed)
    return {"out": str(settings.out), "lines": [f"wrote smoke model (random weights) to {settings.out}"]}


COMMAND = Command(
    ("smoke-model",), help="build a tiny random-weight model (offline demo, tests)",
    description="Build a tiny model with random weights and a tokenizer trained on the given texts (or a given "
                "vocabulary): for trying the pipeline offline and for tests. Its numbers mean nothing.",
    run=smoke_model, settings=SmokeModelSettings)
