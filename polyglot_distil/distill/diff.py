"""The sparse difference of a phase-2 run, and `apply-diff`, which rebuilds the dense model from it.

    polyglot-distil apply-diff --student out/phase1/final --diff out/task/sparse_diff --out out/task-dense

The sparse difference (OUT/sparse_diff/) is the trained model relative to the phase-1 student:
`diff.safetensors` holds, per body parameter with chosen entries, `body.NAME.indices` (flat
indices, int32 or int64) and `body.NAME.values` (the trained values there, not differences, so
that applying it rebuilds the model bit for bit), and `head.NAME` (whole head tensors);
`sparse_diff.json` the base's fingerprint, density, K and the names; `config.json` the
classifier's configuration. `apply-diff` rebuilds the dense model from the base and the diff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from polyglot_distil.errors import UserError
from polyglot_distil.models.classifier import new_classifier
from polyglot_distil.models.loading import copy_tokenizer, saved_dtype
from polyglot_distil.options import OVERWRITE, READS, TRUST_REMOTE_CODE, WRITES, like, setting
from polyglot_distil.outputs import atomic_dir, check_writable

if TYPE_CHECKING:
    import torch

    from polyglot_distil.distill.sparse import LotteryTicket


DIFF_FILE = "diff.safetensors"


INFO_FILE = "sparse_diff.json"


FORMAT = "polyglot-distil sparse diff 1"


def write_diff(folder: Path, weights: dict[str, torch.Tensor], ticket: LotteryTicket, config_file: Path,
               info: dict) -> dict:
    """Write the diff of the dense `weights` (a state dict trained with `ticket`) into `folder`.
    Every selectable entry outside the mask must still be theta0 (checked: a difference is a bug,
    and the diff would not rebuild the model). Returns the JSON record."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name in ticket.groups.selectable:
        mask, base, trained = ticket.mask[name].cpu(), ticket.theta0[name], weights[name].cpu()
        outside = ~mask
        if not torch.equal(trained[outside], base[outside].to(trained.dtype)):  # saved in --save-dtype
            raise RuntimeError(f"{name}: entries outside the mask moved from theta0 during sparse training")
        indices = torch.nonzero(mask.reshape(-1)).squeeze(1)
        if len(indices):
            dtype = torch.int32 if mask.numel() < 2**31 else torch.int64
            tensors[f"body.{name}.indices"] = indices.to(dtype)
            tensors[f"body.{name}.values"] = trained.reshape(-1)[indices].contiguous()
    for name in ticket.groups.head:
        tensors[f"head.{name}"] = weights[name].contiguous().cpu()
    record = {"format": FORMAT, **info, "k": ticket.k,
              "selectable": sum(ticket.theta0[n].numel() for n in ticket.groups.selectable),
              "head": ticket.groups.head, "frozen": ticket.groups.frozen,
              "body": [n for n in ticket.groups.selectable if f"body.{n}.indices" in tensors],
              "values": "trained values at the flat indices (not differences)"}
    save_file(tensors, folder / DIFF_FILE, metadata={"format": "pt"})
    (folder / "config.json").write_bytes(Path(config_file).read_bytes())
    (folder / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def apply_diff(base: str, diff: str | Path, trust_remote_code: bool = False):
    """The dense classifier: the body of `base` with the diff's entries and head written in."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from polyglot_distil.fingerprints import body_fingerprint

    diff = Path(diff)
    if not (diff / INFO_FILE).is_file() or not (diff / DIFF_FILE).is_file():
        raise UserError(f"--diff {diff}: not a sparse diff folder (expected {INFO_FILE} and {DIFF_FILE}, "
                        "as 'distil task' writes in OUT/sparse_diff)")
    record = json.loads((diff / INFO_FILE).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise UserError(f"--diff {diff}: unknown format {record.get('format')!r} (expected {FORMAT!r})")
    config = AutoConfig.from_pretrained(diff)
    # The base in float32, as `distil task` trained and fingerprinted it; the dense model in the
    # dtype the trained model was saved in (the diff's values are in it).
    try:
        model, new_names = new_classifier(base, 0, trust_remote_code, config=config, dtype=torch.float32)
    except RuntimeError as exc:  # transformers: the base's tensors do not fit the diff's configuration
        if "mismatch" not in str(exc).lower():
            raise
        raise UserError(f"--student {base} does not fit the diff in {diff} (its tensors have other shapes: another "
                        "vocabulary or size); pass the phase-1 student that 'distil task' was given as "
                        "--student") from None
    head = set(record["head"])
    if not new_names <= head:
        lacking = ", ".join(sorted(new_names - head)[:3])
        raise UserError(f"--student {base} lacks weights the diff does not carry ({lacking}); "
                        "pass the phase-1 student that 'distil task' was given as --student")
    weights = dict(model.named_parameters())
    body = [n for n in weights if n not in head]
    if body_fingerprint(weights, body) != record["base_fingerprint"]:
        raise UserError(f"--student {base} is not the model this diff was trained from (its weights differ); "
                        f"pass the phase-1 student given to 'distil task' ({record.get('base', 'see ' + INFO_FILE)})")
    try:
        tensors = load_file(diff / DIFF_FILE)
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--diff {diff / DIFF_FILE} cannot be read ({first}): the file is damaged or cut short; "
                        "copy it again from the 'distil task' run (OUT/sparse_diff)") from None
    expected = [*(f"body.{n}.{part}" for n in record["body"] for part in ("indices", "values")),
                *(f"head.{n}" for n in record["head"])]
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise UserError(f"--diff {diff / DIFF_FILE} lacks {missing[0]}, which {INFO_FILE} lists: the two files do "
                        "not belong together; copy the whole sparse_diff folder again")
    for name in record["head"]:
        if tuple(tensors[f"head.{name}"].shape) != tuple(weights[name].shape):
            raise UserError(f"--diff {diff}: head tensor {name} has shape {tuple(tensors[f'head.{name}'].shape)}, "
                            f"the model built from --student {base} {tuple(weights[name].shape)}; pass the phase-1 "
                            "student that 'distil task' was given as --student")
    for name in record["body"]:
        top = int(tensors[f"body.{name}.indices"].max()) if len(tensors[f"body.{name}.indices"]) else -1
        if top >= weights[name].numel():
            raise UserError(f"--diff {diff}: {name} has entries beyond the --student model's tensor "
                            f"(index {top:,} of {weights[name].numel():,}); pass the phase-1 student that "
                            "'distil task' was given as --student")
    with torch.no_grad():
        for name in record["body"]:
            flat = weights[name].view(-1)
            flat[tensors[f"body.{name}.indices"].long()] = tensors[f"body.{name}.values"].to(flat.dtype)
        for name in record["head"]:
            weights[name].copy_(tensors[f"head.{name}"])
    return model.to(getattr(torch, saved_dtype(config))), record


def model_card(base: str, diff: str, record: dict) -> str:
    """The README of an apply-diff output: what it is, from what, and how to load it."""
    density = record.get("density")
    return "\n".join([
        "# Task model rebuilt from a sparse diff", "",
        "Written by `polyglot-distil apply-diff`: the phase-1 student",
        f"`{base}` with the sparse difference `{diff}` of a `distil task` (lottery-ticket sparse",
        "fine-tuning) written in. It equals that run's `best/` model bit for bit.", "",
        f"- body entries trained: {record['k']:,}" + (f" (density {density})" if density is not None else ""),
        f"- head tensors: {len(record['head'])}",
        "", "Load it with `AutoModelForSequenceClassification.from_pretrained(folder)` and",
        "`AutoTokenizer.from_pretrained(folder)`.", ""])


@dataclass(kw_only=True)
class ApplyDiffSettings:
    """`apply-diff`'s settings."""

    student: str = setting(role=READS, renamed_from=("--base",),
                           help="the phase-1 student folder the diff was trained from")
    diff: str = setting(role=READS, help="the sparse diff folder (OUT/sparse_diff of 'distil task')")
    out: str = setting(role=WRITES, help="the model folder to write")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")
    trust_remote_code: bool = like(TRUST_REMOTE_CODE)


def run_apply_diff(settings: ApplyDiffSettings) -> dict:
    """The `apply-diff` stage: write the dense task model; returns the diff's record, with "lines"."""
    check_writable(settings.out, settings.overwrite)
    model, record = apply_diff(settings.student, settings.diff, settings.trust_remote_code)
    with atomic_dir(settings.out, settings.overwrite) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(settings.student, tmp)
        (tmp / "README.md").write_text(model_card(settings.student, settings.diff, record), encoding="utf-8")
    return {**record, "lines": [f"applied {record['k']:,} body entries and {len(record['head'])} head tensors to "
                                f"{settings.student}", f"wrote {settings.out}"]}
