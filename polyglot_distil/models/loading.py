"""Loading tokenizers and models by hub name or local path, with one-line errors.

Safe by default: no `trust_remote_code` unless the caller passes it, safetensors preferred.
A missing local path, a name the hub does not know and an unreachable hub are told apart,
because the user fixes each differently.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import struct
import warnings
from pathlib import Path

from polyglot_distil.errors import UserError


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else can only be a local path."""
    return not _HUB_ID.match(name) or name.startswith(".")


def check_local_path(what: str, name: str) -> None:
    """A name that can only be a local path (it starts with `.`, `/` or `~`, has more than one
    separator, or its first part is a folder here) and is not there: say so at once, rather than
    after the hub's retries."""
    parts = name.replace(os.sep, "/").split("/")
    looks_local = name.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0]))
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise UserError(f"{what} not found: {name} is not an existing folder (a hub name is NAME or ORG/NAME)")


_HUB_ANSWERS: dict[str, bool] = {}
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable() -> bool:
    """Whether the Hugging Face hub's host takes a connection within 3 s (asked once per process
    and endpoint; False in offline mode; assumed True behind a proxy, which a plain connection would
    not go through)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_ANSWERS:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
            _HUB_ANSWERS[endpoint] = True
        except OSError:
            _HUB_ANSWERS[endpoint] = False
    return _HUB_ANSWERS[endpoint]


def hub_options(name: str) -> dict:
    """`from_pretrained` options for `name`: a name that is no local path, while the hub cannot
    be reached, is looked up in the local cache only (the hub's client would retry for half a
    minute before its error says the same)."""
    return {} if os.path.exists(os.path.expanduser(name)) or hub_reachable() else {"local_files_only": True}


def _load_failure(what: str, name: str, exc: BaseException) -> UserError:
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    lowered = f"{type(exc).__name__} {text}".lower()
    if os.path.exists(name):
        return UserError(f"cannot load {what} from {name}: {first}")
    if _looks_like_path(name):
        return UserError(f"{what} not found: {name} is not an existing path")
    if any(w in lowered for w in ("offline", "couldn't connect", "connection", "resolve", "max retries", "timed out")):
        local = f"there is no folder {name} here, and " if "/" in name else ""
        return UserError(f"cannot load {what} {name!r}: {local}the Hugging Face hub is unreachable and no local copy "
                         "is cached; pass a local folder, or run once with network access")
    if any(w in lowered for w in ("not a valid model identifier", "repository not found", "404", "does not appear")):
        return UserError(f"{what} not found: {name!r} is neither a local path nor a model on the Hugging Face hub")
    return UserError(f"cannot load {what} {name!r}: {first}")


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False):
    """A fast (Rust-backed) `transformers` tokenizer from a hub name, a model folder, or a bare
    `tokenizer.json` file. An XLM-R folder with only `sentencepiece.bpe.model` is read by
    `models/sentencepiece_model.py` (transformers would need `protobuf`, and drops byte fallback,
    which is restored when it drops it from a folder's tokenizer.json)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from polyglot_distil.models.sentencepiece_model import SPM_FILE, restore_byte_fallback, \
        xlmr_tokenizer_from_sentencepiece

    name = str(name_or_path)
    check_local_path("tokenizer", name)
    if os.path.isfile(name):
        if not name.endswith(".json"):
            raise UserError(f"cannot load a tokenizer from the file {name}: pass its folder or a tokenizer.json")
        try:
            return PreTrainedTokenizerFast(tokenizer_file=name)
        except Exception as exc:
            raise _load_failure("tokenizer", name, exc) from None
    try:
        tokenizer = xlmr_tokenizer_from_sentencepiece(name)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise UserError(f"cannot load tokenizer from {name}: {SPM_FILE} is not a readable SentencePiece model "
                        f"({type(exc).__name__}: {exc})") from None
    if tokenizer is not None:
        return tokenizer
    protobuf = _has_protobuf()
    try:
        # without protobuf, transformers warns that it falls back to tiktoken: the error below says it once
        with contextlib.nullcontext() if protobuf else _quiet_logger("transformers.tokenization_utils_tokenizers"):
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **hub_options(name))
    except Exception as exc:
        if "tiktoken" in str(exc) and not protobuf:  # transformers' fallback for a .model file
            raise UserError(f"cannot load tokenizer from {name}: transformers reads its SentencePiece model file "
                            "only with the protobuf package; install it: pip install protobuf") from None
        raise _load_failure("tokenizer", name, exc) from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"the tokenizer of {name} has no fast (tokenizers) version, which polyglot-distil needs")
    return restore_byte_fallback(tokenizer, name)


@contextlib.contextmanager
def _quiet_logger(name: str):
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _has_protobuf() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("google.protobuf") is not None
    except (ImportError, ValueError):  # no `google` package at all
        return False


def vocab_in_id_order(tokenizer) -> list[str]:
    """Every token string, indexed by id (added tokens included)."""
    backend = tokenizer.backend_tokenizer
    size = backend.get_vocab_size(with_added_tokens=True)
    tokens = [backend.id_to_token(i) for i in range(size)]
    return ["" if t is None else t for t in tokens]


def load_model(name_or_path: str | os.PathLike, model_class=None, trust_remote_code: bool = False, **kwargs):
    """A `transformers` model (default `AutoModel`) by hub name or local folder; safetensors
    preferred, no remote code unless asked."""
    from transformers import AutoModel

    model_class = model_class or AutoModel
    name = str(name_or_path)
    check_local_path("model", name)
    if os.path.isfile(name):
        raise UserError(f"{name} is a file; pass the model's folder")
    if kwargs.get("attn_implementation") == "sdpa":  # a family without the fast attention runs eager
        from transformers import AutoConfig

        from polyglot_distil.models.families import runnable_attention

        kwargs["attn_implementation"] = runnable_attention(load_model(name, AutoConfig, trust_remote_code), "sdpa")
    wants_report = kwargs.pop("output_loading_info", False)
    is_model = model_class.__name__ != "AutoConfig"
    try:
        with quiet_load_report(), warnings.catch_warnings():  # the caller decides what missing weights mean
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below if unsafe
            loaded = model_class.from_pretrained(name, trust_remote_code=trust_remote_code, **hub_options(name),
                                                 **({"output_loading_info": True} if is_model else {}), **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _load_failure("model", name, exc) from None
    except pickle.UnpicklingError as exc:
        raise UserError(f"cannot load model from {name}: its pickle checkpoint (.bin) holds more than tensors "
                        f"(torch.load with weights_only=True refused it: {type(exc).__name__}); use a safetensors "
                        "copy of the model from a source you trust") from None
    except RuntimeError as exc:
        mismatch = "ignore_mismatched_sizes" in str(exc) or "size mismatch" in str(exc)
        if not mismatch or "config" in kwargs:  # a configuration of the caller's: the caller names the cause
            raise
        raise UserError(f"cannot load model from {name}: its config.json does not match its weights "
                        f"({_first_mismatch(name, model_class, trust_remote_code)}); use the config.json that came "
                        "with these weights") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UserError(f"cannot load model from {name}: a safetensors file is damaged or cut short "
                        f"({(str(exc).strip().splitlines() or ['?'])[0]}); download or write it again") from None
    if not is_model:
        return loaded
    model, report = loaded
    if "config" not in kwargs:  # a configuration of the caller's is the caller's to check
        _check_layer_tensors(name, report)
    return (model, report) if wants_report else model


# A tensor of one numbered layer of the encoder (BERT's encoder.layer.3., ModernBERT's layers.3., T5's block.3.)
_LAYER_TENSOR = re.compile(r"(^|\.)(layer|layers|block|blocks)\.\d+\.")


def _check_layer_tensors(name: str, report: dict) -> None:
    """A config.json with another number of layers than its weights changes no tensor's shape, so
    transformers loads it without a word: the layers the weights lack made up at random, the ones
    the config lacks dropped. A missing head (a classifier on a masked-LM checkpoint) or pooler is
    the caller's to judge; a missing or extra layer is never meant."""
    for keys, how in ((report.get("missing_keys"), "config.json has it, the weights lack it: it would be random"),
                      (report.get("unexpected_keys"), "the weights have it, config.json has no such layer: it "
                                                      "would be dropped")):
        layer_keys = sorted(key for key in keys or () if _LAYER_TENSOR.search(key))
        if layer_keys:
            raise UserError(f"cannot load model from {name}: its config.json does not match its weights (tensor "
                            f"{layer_keys[0]}: {how}); use the config.json that came with these weights")


def _first_mismatch(folder: str, model_class, trust_remote_code: bool) -> str:
    """`tensor T is [a, b] in the weights, [c, d] by config.json` for the first tensor whose shape
    the folder's config.json and its safetensors disagree on (a model built on the meta device)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = model_class.from_config(config)
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        prefix = getattr(model, "base_model_prefix", "")
        for path in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():
                    shape = list(weights.get_slice(key).get_shape())
                    for candidate in (key, f"{prefix}.{key}", key.split(".", 1)[-1]):
                        if candidate in expected and expected[candidate] != shape:
                            return f"tensor {key} is {shape} in {path.name}, {expected[candidate]} by config.json"
    except Exception:  # noqa: BLE001 - only the detail of the message is lost
        pass
    return "a tensor's shape differs"


def check_tokenizer_fits(model, tokenizer, name: str | os.PathLike) -> None:
    """The check `trim` applies, for every command that loads a model with a tokenizer: a token id
    past the embedding's rows would fail deep inside the first forward pass."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise UserError(f"{name}: the tokenizer has {len(tokenizer):,} tokens but the embedding only {rows:,} rows (a "
                        "tokenizer of another model?); use the tokenizer that came with the model")


def folder_size_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of every file below `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def quiet_transformers() -> None:
    """No per-file loading/saving bars from transformers: our commands show their own progress,
    and those bars would bury it (and fill logs)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def copy_tokenizer(source: str | Path, target: Path, tokenizer=None) -> None:
    """Put the tokenizer of model folder (or hub name) `source` into folder `target`."""
    source_dir = Path(source)
    if source_dir.is_dir():
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copyfile(source_dir / name, target / name)
    else:
        (tokenizer or load_tokenizer(source)).save_pretrained(target)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")


def same_tokenizer_files(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two local model folders hold byte-identical tokenizer files (a student and the
    teacher it was built from, whose tokenizer was copied): then both load the same tokenizer
    (for models of one family) and loading it twice, seconds for a 250,000-token vocabulary,
    can be skipped. False for anything else: hub names, a folder without tokenizer.json."""
    import filecmp

    a, b = Path(first), Path(second)
    if not (a.is_dir() and b.is_dir() and (a / "tokenizer.json").is_file()):
        return False
    for name in TOKENIZER_FILES:
        here, there = (a / name).is_file(), (b / name).is_file()
        if here != there or (here and not filecmp.cmp(a / name, b / name, shallow=False)):
            return False
    return True


def model_class_for(config):
    """The `transformers` class that loads the source with its head: MaskedLM when it has one,
    else the class its config names, else the bare encoder."""
    import transformers

    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return transformers.AutoModelForMaskedLM
    for name in architectures:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def has_mlm_head(config) -> bool:
    """Whether the checkpoint has a masked-LM head (ForMaskedLM, or ForPreTraining: MLM + NSP;
    not ELECTRA's discriminator; models/families.py)."""
    from polyglot_distil.models.families import family_of

    return family_of(config).has_mlm_head(config)


def encoder_class_for(config):
    """The class distillation loads a pretrained encoder with: the masked-LM model when the
    checkpoint has an MLM head, else the bare encoder (an embedding model such as E5 has none,
    and a masked-LM class would give it a random head)."""
    import transformers

    return transformers.AutoModelForMaskedLM if has_mlm_head(config) else transformers.AutoModel


@contextlib.contextmanager
def quiet_load_report():
    """transformers logs a table of the weights a classifier built on a masked-LM checkpoint
    drops (its MLM head) and adds (the new head): both intended here. (With that logger above
    WARNING, transformers 5 also checks a tensor-parallel plan, and warns about it: silenced too.)"""
    import logging

    loggers = [logging.getLogger(f"transformers.{name}") for name in ("modeling_utils", "distributed.tensor_parallel")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# dtypes: training stages train float32 weights (bf16/fp16 only through autocast) and save in
# the dtype of the model they started from, unless told otherwise (--save-dtype)

SAVE_DTYPES = ("float32", "bfloat16", "float16")


def saved_dtype(config) -> str:
    """The dtype a checkpoint's weights were saved in, as its configuration (freshly loaded, not a
    model's) says; "float32" when it does not say."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in SAVE_DTYPES else "float32"


def save_pretrained_as(model, folder: str | os.PathLike, dtype: str | None = None) -> None:
    """`model.save_pretrained(folder)` with the floating-point tensors, and config.json's dtype, in
    `dtype` (one of SAVE_DTYPES; None: as they are). The model itself is left as it is; tied
    tensors stay tied (each is converted once)."""
    import json

    import torch

    target = getattr(torch, dtype) if dtype is not None else None
    if target is None or all(p.dtype == target for p in model.parameters() if p.is_floating_point()):
        model.save_pretrained(folder)
        return
    converted, state = {}, {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
            if view not in converted:
                converted[view] = tensor.to(target)
            tensor = converted[view]
        state[name] = tensor
    model.save_pretrained(folder, state_dict=state)
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["dtype"] = dtype
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
