"""A checkpoint's tensors as saved, whatever class loads them.

A class loads only the tensors it has: `BertForMaskedLM` drops the pooler and the next-sentence
head that the real bert-base-multilingual-cased checkpoint carries, `RobertaForMaskedLM` the
pooler of XLM-R. `trim` must keep every tensor of its source, so it reads the ones the loaded
class left out (transformers' `unexpected_keys`) straight from the checkpoint files here, and
`carried_tensors` reads them (re-indexed when vocabulary-sized) and `carry_tensors` writes them into
the trimmed folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"


def _local_or_cached(name_or_path: str, filename: str) -> Path | None:
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder / filename if (folder / filename).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), filename)
    except Exception:  # an odd name or a broken cache
        return None
    return Path(cached) if isinstance(cached, str) else None


def checkpoint_files(name_or_path: str | os.PathLike) -> list[Path]:
    """The weight files of a model folder (or of a hub model in the local cache, where
    `from_pretrained` just put them): safetensors (one file or the shards of an index), else
    `pytorch_model.bin`. Empty when none is found."""
    name = str(name_or_path)
    single = _local_or_cached(name, SAFETENSORS)
    if single is not None:
        return [single]
    index = _local_or_cached(name, SAFETENSORS_INDEX)
    if index is not None:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [index.parent / shard for shard in shards]
    legacy = _local_or_cached(name, PYTORCH)
    return [legacy] if legacy is not None else []


def read_tensors(files: list[Path], names: set[str]) -> dict:
    """{name: torch tensor} for `names` from the checkpoint `files` (pickles read with
    `weights_only=True`)."""
    import torch
    from safetensors import safe_open

    found = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for name in names & set(f.keys()):
                    found[name] = f.get_tensor(name)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise UserError(f"{path}: cannot read it as weights only ({type(exc).__name__}); "
                                "convert the checkpoint to safetensors") from None
            found.update({name: state[name] for name in names & set(state)})
    return found


def carried_tensors(source: str | os.PathLike, unexpected: list[str], kept_ids: np.ndarray,
                    old_rows: int) -> dict:
    """The source's tensors that the loaded class left out (`unexpected`), read from its checkpoint
    and re-indexed to `kept_ids` when their first dimension is the old vocabulary (`old_rows`),
    unchanged otherwise. One with the vocabulary's size along another axis cannot be placed (the
    class that would say how it is indexed is not loaded): a UserError naming it."""
    import torch

    if not unexpected:
        return {}
    files = checkpoint_files(source)
    tensors = read_tensors(files, set(unexpected))
    missing = sorted(set(unexpected) - set(tensors))
    if missing:
        raise UserError(f"{source}: tensors {', '.join(missing[:3])} were in its checkpoint but cannot be read back "
                        "from its files; trim a local folder with safetensors weights")
    for name, tensor in sorted(tensors.items()):
        if old_rows in tuple(tensor.shape)[1:]:
            raise UserError(f"cannot trim {source}: its tensor {name} {list(tensor.shape)}, which the model class "
                            f"does not load, has an axis of the vocabulary's size ({old_rows:,}) after its first; "
                            "trim cannot tell how it is indexed, and nothing was written")
    kept = torch.as_tensor(kept_ids, dtype=torch.long)
    return {name: (t.index_select(0, kept) if t.dim() and t.shape[0] == old_rows else t).contiguous()
            for name, t in tensors.items()}


def carry_tensors(carried: dict, folder: Path) -> list[str]:
    """Write `carried` ({name: tensor}, from `carried_tensors`) into the saved `folder`'s
    safetensors. Returns the names written."""
    from safetensors.torch import load_file, save_file

    if not carried:
        return []
    single, index = folder / SAFETENSORS, folder / SAFETENSORS_INDEX
    if single.is_file():
        state = load_file(single)
        clash = set(state) & set(carried)
        if clash:
            raise RuntimeError(f"tensors saved twice: {sorted(clash)[:3]}")
        save_file({**state, **carried}, single, metadata={"format": "pt"})
    elif index.is_file():  # a sharded save: one more shard for the carried tensors
        shard = "model-carried.safetensors"
        save_file(carried, folder / shard, metadata={"format": "pt"})
        spec = json.loads(index.read_text(encoding="utf-8"))
        spec["weight_map"].update({name: shard for name in carried})
        index.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    else:
        raise RuntimeError(f"{folder}: no {SAFETENSORS} or {SAFETENSORS_INDEX} to add the carried tensors to")
    return sorted(carried)


def drop_tensors(folder: Path, names: list[str]) -> list[str]:
    """Remove `names` (tensors the loading class initialised because the checkpoint lacked them)
    from the saved `folder`, so that it holds exactly the source's tensors. Returns those removed."""
    from safetensors.torch import load_file, save_file

    target = folder / SAFETENSORS
    if not names or not target.is_file():
        return []
    state = load_file(target)
    dropped = sorted(set(names) & set(state))
    if dropped:
        save_file({k: v for k, v in state.items() if k not in dropped}, target, metadata={"format": "pt"})
    return dropped


POOLER_AND_NSP = ("pooler.dense.weight", "pooler.dense.bias", "cls.seq_relationship.weight",
                  "cls.seq_relationship.bias")


def carry_body_tensors(source: str | os.PathLike, folder: Path) -> list[str]:
    """Add to the saved `folder` the pooler and next-sentence tensors of the checkpoint `source`
    that the saved model lacks (a masked-LM class has neither): a student keeps its teacher's
    pretrained pooler, and phase 1 keeps the student's. Returns the names added."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    files, target = checkpoint_files(source), folder / SAFETENSORS
    if not files or not target.is_file():
        return []
    with safe_open(str(target), framework="pt") as f:
        saved = set(f.keys())
    names = set()
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                names |= {k for k in f.keys() if k.endswith(POOLER_AND_NSP) and k not in saved}
    if not names:
        return []
    hidden = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    extra = {k: v for k, v in read_tensors(files, names).items() if v.shape[-1] == hidden}  # a narrower student: none
    if not extra:
        return []
    tensors = load_file(target)
    dtype = next((v.dtype for v in tensors.values() if v.is_floating_point()), None)  # as the model was saved
    extra = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in extra.items()}
    save_file({**tensors, **extra}, target, metadata={"format": "pt"})
    return sorted(extra)


def has_pooler(files: list[Path]) -> bool:
    """Whether the checkpoint carries a trained pooler (BERT's `pooler.dense`)."""
    from safetensors import safe_open

    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                if any(k.endswith("pooler.dense.weight") for k in f.keys()):
                    return True
    return False


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# what sentence-transformers passes to `AutoModel.from_pretrained` for a checkpoint without a pooler
NO_POOLER_MODEL_ARGS = {"add_pooling_layer": False}


def load_without_pooler(folder: Path) -> bool:
    """Tell sentence-transformers to build a pooler-less checkpoint's transformer without a pooler.

    E5 never had a pooler and uses mean pooling; `AutoModel` builds `BertModel` /
    `XLMRobertaModel` with one by default, and transformers then prints a load report of
    `pooler.*` "MISSING ... newly initialized", which alarms an embedding user although the
    embeddings never read it. `model_args` in `sentence_bert_config.json` (read by every
    sentence-transformers version since 2) passes `add_pooling_layer=False`: the same embeddings,
    loaded silently. Changes nothing unless `folder` is a sentence-transformers model whose
    weights lack `pooler.dense` and whose base class takes `add_pooling_layer`. Returns whether
    the file was changed."""
    import inspect

    settings_path = Path(folder) / "sentence_bert_config.json"
    if not settings_path.is_file() or has_pooler(checkpoint_files(folder)):
        return False
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING.get(type(AutoConfig.from_pretrained(folder)), None)
    if model_class is None or "add_pooling_layer" not in inspect.signature(model_class.__init__).parameters:
        return False
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    model_args = settings.get("model_args") or {}
    if model_args.get("add_pooling_layer") is False:
        return False
    settings["model_args"] = {**model_args, **NO_POOLER_MODEL_ARGS}
    settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return True


def copy_sentence_transformers(source: str | os.PathLike, target: Path) -> list[str]:
    """Copy a sentence-transformers model's own files (modules.json, its settings, and the folders
    of the modules after the transformer: pooling, dense, normalize) from `source` (a folder, or
    a hub name) into the model folder `target`, so that the trimmed folder is still a
    sentence-transformers model. Returns the files copied; none when `source` is not one."""
    import shutil

    folder = Path(source)
    if folder.is_dir():
        if not (folder / "modules.json").is_file():
            return []
        copied = []
        for name in ST_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / name)
                copied.append(name)
        for module in json.loads((folder / "modules.json").read_text(encoding="utf-8")):
            path = module.get("path") or ""
            if path and (folder / path).is_dir():
                shutil.copytree(folder / path, target / path, dirs_exist_ok=True)
                copied += [str(p.relative_to(folder)) for p in sorted((folder / path).rglob("*")) if p.is_file()]
        return copied
    try:  # a hub model: its small sentence-transformers files, fetched like from_pretrained fetches
        from huggingface_hub import hf_hub_download, list_repo_files

        files = list_repo_files(str(source))
    except Exception:
        return []
    if "modules.json" not in files:
        return []
    modules = json.loads(Path(hf_hub_download(str(source), "modules.json")).read_text(encoding="utf-8"))
    folders = [m["path"] + "/" for m in modules if m.get("path")]
    wanted = [f for f in files if f in ST_FILES or any(f.startswith(p) for p in folders)]
    for name in wanted:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hf_hub_download(str(source), name), target / name)
    return wanted
