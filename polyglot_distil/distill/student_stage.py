"""The `student` stage: a compact student of a teacher in a model folder (how it is built:
models/student.py).

    polyglot-distil student --teacher out/trimmed --out out/student                  # half the layers
    polyglot-distil student --teacher out/trimmed --out out/student --init-layers 0,2,4,7,9,11
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from polyglot_distil.models.checkpoint import carry_body_tensors
from polyglot_distil.models.loading import copy_tokenizer
from polyglot_distil.models.student import StudentShape, make_student
from polyglot_distil.options import OVERWRITE, READS, SEED, TRUST_REMOTE_CODE, WRITES, like, setting
from polyglot_distil.outputs import atomic_dir, check_writable
from polyglot_distil.params import count_parameters


def kept_table(description: dict) -> str:
    """The kept heads and neurons of every student layer, as a terminal table."""
    from polyglot_distil.tables import text_table

    kept = description["kept"]
    rows = [["student layer", "teacher layer", "heads kept", "neurons kept"]]
    for j, layer in enumerate(kept["layers"]):
        shown = ",".join(map(str, layer["neurons"][:8])) + (",..." if len(layer["neurons"]) > 8 else "")
        rows.append([str(j), str(layer["teacher_layer"]), ",".join(map(str, layer["heads"])),
                     f"{len(layer['neurons'])}: {shown}"])
    return text_table(rows, rule=True)


@dataclass(kw_only=True)
class StudentPaths:
    """What `student` reads and writes."""

    teacher: str = setting(role=READS, help="teacher model folder (e.g. the trimmed model) or hub name")
    out: str = setting(role=WRITES, help="the student model folder to write")


@dataclass(kw_only=True)
class StudentSettings(StudentShape, StudentPaths):
    """`student`'s settings (the command line's options, a `run` config's `student:` section)."""

    seed: int = like(SEED, help="seed for the random weights")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")
    trust_remote_code: bool = like(TRUST_REMOTE_CODE)


def run_student(settings: StudentSettings) -> dict:
    """The `student` stage: build, save; returns the description (student.json), its summary in "lines"."""
    from transformers import AutoConfig

    from polyglot_distil.models.loading import check_tokenizer_fits, encoder_class_for, load_model, load_tokenizer

    check_writable(settings.out, settings.overwrite)
    spec = settings.spec(settings.seed)
    config = load_model(settings.teacher, AutoConfig, trust_remote_code=settings.trust_remote_code)
    teacher = load_model(settings.teacher, encoder_class_for(config), trust_remote_code=settings.trust_remote_code)
    tokenizer = load_tokenizer(settings.teacher, settings.trust_remote_code)
    check_tokenizer_fits(teacher, tokenizer, settings.teacher)  # the student gets this tokenizer
    student, description = make_student(teacher, tokenizer if spec.init == "importance" else None, spec)
    description["teacher"] = str(settings.teacher)
    with atomic_dir(settings.out, settings.overwrite) as tmp:
        student.save_pretrained(tmp)
        description["kept_from_teacher"] = carry_body_tensors(settings.teacher, tmp)  # e.g. a pooler the class lacks
        copy_tokenizer(settings.teacher, tmp)
        (tmp / "student.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    lines = [f"student: {description['layers']} layers (teacher {description['teacher_layers']}), "
             f"hidden {student.config.hidden_size}, {count_parameters(student)['total']:,} parameters "
             f"(teacher {count_parameters(teacher)['total']:,}); init {description['init']}"
             + (f" from teacher layers {description['init_layers']}" if description["init_layers"] else "")]
    if "kept" in description:
        kept = description["kept"]
        lines += [f"kept by importance ({kept['loss']} loss): {len(kept['hidden'])} of {teacher.config.hidden_size} "
                  "hidden features; per layer (all in student.json):", *kept_table(description).splitlines()]
    return {**description, "lines": [*lines, f"wrote {settings.out}"]}
