"""`polyglot-distil export onnx`: an ONNX graph of a model, checked with onnxruntime against PyTorch
(`polyglot_distil.models.onnx_model.export_onnx`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from polyglot_distil.options import APPEND, FLAG, OVERWRITE, READS, TRUST_REMOTE_CODE, WRITES, Command, like, setting


@dataclass(kw_only=True)
class ExportOnnxSettings:
    model: str = setting(role=READS, help="the float model folder (e.g. the best/ of 'distil task')")
    out: str = setting(role=WRITES, help="folder for model.onnx (model_int8.onnx), config, tokenizer and export.json")
    opset: int = setting(17, advanced=True, help="ONNX opset version")
    int8: bool = setting(False, kind=FLAG, help="also write model_int8.onnx (onnxruntime dynamic int8)")
    embeddings: str = setting("float", choices=("float", "int8"), help="with --int8: int8 embedding tables too")
    check_text: list[str] = setting([], kind=APPEND, role=READS, metavar="SOURCE", renamed_from=("--text",),
                                    help="held-out text to check the graph on (any corpus source; repeatable; "
                                         "default: random ids)")
    check_lines: int = setting(64, help="lines (or random rows) the check runs on")
    tolerance: float = setting(1e-4, advanced=True, help="largest allowed |ONNX - PyTorch| of the float graph")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")
    trust_remote_code: bool = like(TRUST_REMOTE_CODE)


def export(settings: ExportOnnxSettings) -> dict:
    from polyglot_distil.models.onnx_model import export_onnx

    values = asdict(settings)
    report = export_onnx(values.pop("model"), values.pop("out"), **values)
    checks = report["max_abs_difference"]
    return {**report, "lines": [
        f"ONNX opset {settings.opset}: max abs difference from PyTorch {checks['float']:.2e} on "
        f"{report['checked_on']}" + (f"; int8 variant {checks['int8']:.2e}" if "int8" in checks else ""),
        f"wrote {settings.out} (" + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in report["bytes"].items()) + ")"]}


COMMAND = Command(
    ("export", "onnx"), help="an ONNX graph of a model, checked with onnxruntime against PyTorch",
    description="An ONNX graph of a model, checked with onnxruntime against PyTorch.",
    group_help={"export": "export a model for deployment (ONNX)"}, run=export, settings=ExportOnnxSettings)
