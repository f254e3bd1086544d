"""Trim a multilingual encoder to the vocabulary its languages use ("Load What You Need").

    polyglot-distil trim --model bert-base-multilingual-cased --counts counts.parquet --langs en,fr \
        --out models/mbert-en-fr                                  # Geotrend's rule: >= 0.005% of lines
    polyglot-distil trim --model xlm-roberta-base --counts counts.parquet --langs en,sw \
        --min-prob 1e-6 --keep-chars --out models/xlmr-en-sw       # BiStil's rule, no word lost to <unk>
    polyglot-distil trim ... --coverage 0.999 --min-count 2 --keep-file keep.txt --no-verify

The output folder loads with `AutoModel*` / `AutoTokenizer` and no code of ours:
`model.safetensors` (the source's head and dtype; embedding rows, tied MLM decoder and its bias
selected by index), `tokenizer.json` with every id remapped (vocabulary, added tokens,
post-processor, padding), `tokenizer_config.json` with the source's settings (casing), a legacy
`vocab.txt` (WordPiece) or trimmed `sentencepiece.bpe.model` (XLM-R, when the source has one),
`trim_report.json` (`old_ids[new_id] = old_id`, parameters before/after, tokens kept per
language and rule, the quick verify) and a model card `README.md`.

Kept ids stay in their original order, so XLM-R's `<s>=0 <pad>=1 </s>=2 <unk>=3` keep the ids
its position ids depend on. Supported tokenizers: WordPiece (BERT family) and SentencePiece
Unigram (XLM-R). By default a quick `verify` runs on the first lines of the counted corpus
before the folder is put in place: a trim that changes anything on covered text is not written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from polyglot_distil.corpus import Caps, group_lang_specs, iter_language, parse_sources
from polyglot_distil.count import Counts, read_counts
from polyglot_distil.errors import UserError
from polyglot_distil.loading import (folder_size_bytes, load_model, load_tokenizer, tokenizer_fingerprint,
                                     vocab_in_id_order)
from polyglot_distil.outputs import atomic_dir, check_writable
from polyglot_distil.vocab import (BISTIL_MIN_PROB, GEOTREND_LINE_SHARE, Rules, id_map_for, select_vocabulary,
                                   selection_table)

SUPPORTED = {"WordPiece": "WordPiece (BERT family: bert, distilbert, ...)",
             "Unigram": "SentencePiece Unigram (XLM-R family)"}
SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                   "unk_token_id", "mask_token_id", "decoder_start_token_id")
SPM_FILE = "sentencepiece.bpe.model"
_SOURCE_KWARGS = ("vocab_file", "tokenizer_file", "name_or_path", "vocab", "merges", "tokenizer_object",
                  "added_tokens_decoder")


# ---------------------------------------------------------------------------------------------
# Loading


def vocab_size(tokenizer) -> int:
    """Token ids the tokenizer can produce, added tokens included."""
    return tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def tokenizer_model_type(tokenizer, name: str) -> str:
    """"WordPiece" or "Unigram"; anything else is a UserError naming the supported types."""
    kind = type(tokenizer.backend_tokenizer.model).__name__
    if kind not in SUPPORTED:
        byte_level = " (GPT-2-style byte-level BPE)" if kind == "BPE" else ""
        raise UserError(f"cannot trim {name}: its tokenizer is {kind}{byte_level}; supported: "
                        f"{'; '.join(SUPPORTED.values())}")
    return kind


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


def special_token_ids(tokenizer, config) -> list[int]:
    """Ids that are always kept: the tokenizer's special and added tokens, and every special id
    the model's config names."""
    size = vocab_size(tokenizer)
    ids = set(tokenizer.all_special_ids) | set(tokenizer.backend_tokenizer.get_added_tokens_decoder())
    ids |= {getattr(config, key) for key in SPECIAL_ID_KEYS if isinstance(getattr(config, key, None), int)}
    return sorted(i for i in ids if 0 <= i < size)


def check_counts(counts: Counts, tokenizer, counts_path, model_name: str) -> None:
    """Counts made with another tokenizer would select the wrong rows."""
    size = vocab_size(tokenizer)
    if counts.vocab_size != size or counts.fingerprint != tokenizer_fingerprint(tokenizer):
        raise UserError(f"{counts_path or 'the counts'}: counted with the tokenizer {counts.tokenizer} "
                        f"({counts.vocab_size:,} tokens), not with that of {model_name} ({size:,} tokens); "
                        f"count again with --tokenizer {model_name}")


# ---------------------------------------------------------------------------------------------
# Model


def _vocab_parameters(model):
    """The vocabulary-indexed parameters: input embedding, output decoder weight and bias, and
    the head's own output bias (BERT's `cls.predictions.bias`, XLM-R's `lm_head.bias`)."""
    size = model.get_input_embeddings().weight.shape[0]
    params = [model.get_input_embeddings().weight]
    decoder = model.get_output_embeddings()
    if decoder is not None:
        params += [p for p in (decoder.weight, getattr(decoder, "bias", None)) if p is not None]
        parent = _parent_of(model, decoder)
        bias = getattr(parent, "bias", None)
        if bias is not None and tuple(bias.shape) == (size,):
            params.append(bias)
    unique = {id(p): p for p in params}
    return list(unique.values())


def _parent_of(model, module):
    for name, candidate in model.named_modules():
        if candidate is module:
            return model.get_submodule(name.rpartition(".")[0])
    raise ValueError("module not found in model")


def trim_model_vocab(model, kept_ids: np.ndarray) -> dict:
    """In place: keep rows `kept_ids` (int64[V_new], ascending) of every vocabulary-indexed
    tensor, keep ties, remap the config's special ids. Returns vocabulary parameter counts."""
    import torch

    kept = torch.as_tensor(kept_ids, dtype=torch.long)
    embeddings = model.get_input_embeddings()
    old_size = embeddings.weight.shape[0]
    id_map = id_map_for(kept_ids, old_size)
    roberta_pad = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if roberta_pad is not None and id_map[roberta_pad] != roberta_pad:
        raise UserError(f"cannot trim: position ids depend on the pad id {roberta_pad}, which would move to "
                        f"{id_map[roberta_pad]}; keep every token before it")
    vocab_params = _vocab_parameters(model)
    before = sum(p.numel() for p in vocab_params)
    # A tied parameter is one object in several modules: re-index it once, put it back everywhere.
    where: dict[int, list] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            where.setdefault(id(param), []).append((module, name))
    for param in vocab_params:
        selected = torch.nn.Parameter(param.detach().index_select(0, kept), requires_grad=param.requires_grad)
        for module, name in where[id(param)]:
            setattr(module, name, selected)
    embeddings.num_embeddings = len(kept_ids)
    if embeddings.padding_idx is not None:
        embeddings.padding_idx = int(id_map[embeddings.padding_idx])
    decoder = model.get_output_embeddings()
    if decoder is not None:
        decoder.out_features = len(kept_ids)
    config = model.config
    config.vocab_size = len(kept_ids)
    remap_special_ids(config, id_map)
    if getattr(model, "generation_config", None) is not None:
        remap_special_ids(model.generation_config, id_map)
    if decoder is not None and getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        if decoder.weight is not embeddings.weight:
            raise RuntimeError("the MLM decoder lost its tie to the input embedding")
    return {"before": before, "after": sum(p.numel() for p in _vocab_parameters(model))}


def remap_special_ids(config, id_map: np.ndarray) -> None:
    for key in SPECIAL_ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < len(id_map):
            setattr(config, key, int(id_map[value]))


def parameter_count(model) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _remap_post_processor(spec: dict | None, id_map: np.ndarray) -> None:
    """Special-token ids are written into the post-processor: remap them in place."""
    if not spec:
        return
    kind = spec.get("type")
    if kind == "Sequence":
        for inner in spec.get("processors", []):
            _remap_post_processor(inner, id_map)
    elif kind == "TemplateProcessing":
        for token in spec.get("special_tokens", {}).values():
            token["ids"] = [int(id_map[i]) for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            token, old = spec[key]
            spec[key] = [token, int(id_map[old])]


def trim_backend(tokenizer, kept_ids: np.ndarray):
    """A `tokenizers.Tokenizer` holding only `kept_ids`, renumbered 0..V_new-1, with the added
    tokens, the post-processor and the padding id remapped, and truncation switched off."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    id_map = id_map_for(kept_ids, vocab_size(tokenizer))
    model = spec["model"]
    kept = kept_ids.tolist()
    if model["type"] == "WordPiece":
        token_of = {i: token for token, i in model["vocab"].items()}
        model["vocab"] = {token_of[i]: int(id_map[i]) for i in kept if i in token_of}
    elif model["type"] == "Unigram":
        pieces = model["vocab"]
        model["vocab"] = [pieces[i] for i in kept if i < len(pieces)]
        if model.get("unk_id") is not None:
            model["unk_id"] = int(id_map[model["unk_id"]])
    else:
        raise UserError(f"cannot trim a {model['type']} tokenizer; supported: {'; '.join(SUPPORTED.values())}")
    spec["added_tokens"] = [dict(t, id=int(id_map[t["id"]])) for t in spec.get("added_tokens", [])
                            if id_map[t["id"]] >= 0]
    _remap_post_processor(spec.get("post_processor"), id_map)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = int(id_map[spec["padding"]["pad_id"]])
    spec["truncation"] = None
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def trim_tokenizer(tokenizer, kept_ids: np.ndarray):
    """The source's `transformers` tokenizer class around the trimmed backend, with the source's
    settings (casing, special tokens, max length), ready for `save_pretrained`."""
    backend = trim_backend(tokenizer, kept_ids)
    id_map = id_map_for(kept_ids, vocab_size(tokenizer))
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _SOURCE_KWARGS}
    added = tokenizer.init_kwargs.get("added_tokens_decoder") or {}
    kwargs["added_tokens_decoder"] = {int(id_map[i]): t for i, t in added.items() if id_map[int(i)] >= 0}
    trimmed = type(tokenizer)(tokenizer_object=backend, **kwargs)
    vocab = vocab_in_id_order(tokenizer)
    if vocab_in_id_order(trimmed) != [vocab[i] for i in kept_ids.tolist()]:
        raise RuntimeError("the rebuilt tokenizer's vocabulary is not the kept vocabulary in order")
    return trimmed


def write_vocab_txt(tokenizer, path: Path) -> None:
    """The legacy WordPiece vocabulary: one token per line, line number = id."""
    path.write_text("\n".join(vocab_in_id_order(tokenizer)) + "\n", encoding="utf-8")


def find_sentencepiece(name_or_path: str) -> Path | None:
    """The source's `sentencepiece.bpe.model`, in its folder or the hub cache, if it has one."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder / SPM_FILE if (folder / SPM_FILE).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), SPM_FILE)
    except Exception:  # an odd name or a broken cache: the legacy file is optional
        return None
    return Path(cached) if isinstance(cached, str) else None


# SentencePiece's ModelProto, read and written at the wire level (the `sentencepiece` package
# needs `protobuf` for its Python classes): field 1 = repeated pieces {1: piece, 2: score,
# 3: type}, field 2 = trainer_spec {4: vocab_size}; every other field is copied byte for byte.


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _proto_fields(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, the whole field's bytes, its payload) in order."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
            payload = b""
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            payload, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            payload = b""
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((tag >> 3, data[start:pos], payload))
    return fields


def trim_sentencepiece(data: bytes, kept_ids: np.ndarray, hf_vocab: list[str]) -> bytes | None:
    """A trimmed fairseq-style SentencePiece model for XLM-R: spm `<unk> <s> </s>` (ids 0-2)
    stay, and Hugging Face id h >= 4 is spm id h - 1 before and after. None when the file
    does not match the tokenizer (then no legacy file is written)."""
    fields = _proto_fields(data)
    pieces = [payload for number, _, payload in fields if number == 1]
    names = [next((p for n, _, p in _proto_fields(piece) if n == 1), b"").decode("utf-8") for piece in pieces]
    if names[:3] != ["<unk>", "<s>", "</s>"] or len(hf_vocab) != len(pieces) + 2 or any(
            hf_vocab[h] != names[h - 1] for h in range(4, len(pieces) + 1)):
        return None
    kept = [pieces[h - 1] for h in kept_ids.tolist() if 4 <= h <= len(pieces)]
    new_pieces = pieces[:3] + kept
    out = bytearray()
    pieces_written = False
    for number, raw, payload in fields:
        if number == 1:
            if not pieces_written:
                for piece in new_pieces:
                    out += _varint(1 << 3 | 2) + _varint(len(piece)) + piece
                pieces_written = True
        elif number == 2:  # trainer_spec: its vocab_size (field 4, varint) follows the new size
            spec = b"".join(_varint(4 << 3) + _varint(len(new_pieces)) if n == 4 else r
                            for n, r, _ in _proto_fields(payload))
            out += _varint(2 << 3 | 2) + _varint(len(spec)) + spec
        else:
            out += raw
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# The trim


def report_json(report: dict) -> str:
    """The report indented for reading, with the long `old_ids` list on one line at the end."""
    head = json.dumps({k: v for k, v in report.items() if k != "old_ids"}, indent=1, ensure_ascii=False)
    return head[:-2] + f',\n "old_ids": {json.dumps(report["old_ids"])}\n}}\n'


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def trim(model_name: str, counts: Counts | str | Path, langs: list[str], rules: Rules, out: str | Path, *,
         counts_path: str | Path | None = None, overwrite: bool = False,
         verify_texts: dict[str, list[str]] | None = None, trust_remote_code: bool = False,
         show_progress: bool | None = None, log=print) -> dict:
    """Trim `model_name` to the tokens `rules` select from the counts of `langs` and write the
    folder `out`. With `verify_texts` ({lang: texts}) the saved folder is checked against the
    source before it is put in place. Returns the trim report (also in `out/trim_report.json`)."""
    from transformers import AutoConfig

    out = check_writable(out, overwrite)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    tokenizer = load_tokenizer(model_name, trust_remote_code)
    kind = tokenizer_model_type(tokenizer, model_name)
    if not isinstance(counts, Counts):
        counts_path, counts = counts, read_counts(counts)
    check_counts(counts, tokenizer, counts_path, model_name)
    config = load_model(model_name, AutoConfig, trust_remote_code)  # the config picks the model class
    model_class = model_class_for(config)
    model = load_model(model_name, model_class, trust_remote_code, dtype="auto")
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    vocab = vocab_in_id_order(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(vocab):
        raise UserError(f"{model_name}: the tokenizer has {len(vocab):,} tokens but the embedding only {rows:,} rows")
    selection = select_vocabulary(counts, langs, rules, vocab, special_token_ids(tokenizer, model.config))
    for token in selection.missing_keep:
        print(f"warning: keep-list token {token!r} is not in the vocabulary of {model_name}; ignored", file=sys.stderr)
    kept_ids = selection.kept_ids
    seconds["select"] = time.perf_counter() - start

    start = time.perf_counter()
    params_before, bytes_before = parameter_count(model), weights_bytes(model)
    old_specials = {key: getattr(model.config, key, None) for key in SPECIAL_ID_KEYS}
    vocab_params = trim_model_vocab(model, kept_ids)
    trimmed_tokenizer = trim_tokenizer(tokenizer, kept_ids)
    spm_path = find_sentencepiece(model_name) if kind == "Unigram" else None
    spm_bytes = trim_sentencepiece(spm_path.read_bytes(), kept_ids, vocab) if spm_path else None
    if spm_path and spm_bytes is None:
        print(f"warning: {spm_path} does not match the tokenizer of {model_name}; no {SPM_FILE} written",
              file=sys.stderr)
    seconds["rebuild"] = time.perf_counter() - start

    report = {
        "source": str(model_name), "architecture": type(model).__name__, "tokenizer_model": kind,
        "dtype": str(model.dtype).replace("torch.", ""), "counts": str(counts_path) if counts_path else None,
        "languages": list(langs),
        "vocab_size_before": len(vocab), "vocab_size_after": len(kept_ids),
        "params_before": params_before, "params_after": parameter_count(model),
        "vocab_params_before": vocab_params["before"], "vocab_params_after": vocab_params["after"],
        "weights_bytes_before": bytes_before, "weights_bytes_after": weights_bytes(model),
        "special_tokens": {token: [old, int(selection.id_map[old])]  # [old id, new id]
                           for token, old in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)},
        "config_special_ids": {key.removesuffix("_token_id"): [old, getattr(model.config, key, None)]
                               for key, old in old_specials.items() if isinstance(old, int)},
        "selection": selection.report,
    }
    report["embedding_share_before"] = _share(report["vocab_params_before"], params_before)
    report["embedding_share_after"] = _share(report["vocab_params_after"], report["params_after"])
    report["reduction"] = _share(params_before - report["params_after"], params_before)

    with atomic_dir(out, overwrite) as tmp:
        start = time.perf_counter()
        model.save_pretrained(tmp)
        trimmed_tokenizer.save_pretrained(tmp)
        legacy = []
        if kind == "WordPiece":
            write_vocab_txt(trimmed_tokenizer, tmp / "vocab.txt")
            legacy.append("vocab.txt")
        if spm_bytes is not None:
            (tmp / SPM_FILE).write_bytes(spm_bytes)
            legacy.append(SPM_FILE)
        report["legacy_files"] = legacy
        report["folder_bytes_after"] = folder_size_bytes(tmp)
        seconds["save"] = time.perf_counter() - start
        del model
        report["verify"] = None
        if verify_texts:
            from polyglot_distil.verify import EquivalenceError, verify_equivalence, verify_table

            start = time.perf_counter()
            (tmp / "trim_report.json").write_text(json.dumps({"old_ids": kept_ids.tolist()}), encoding="utf-8")
            results = verify_equivalence(model_name, tmp, verify_texts, trust_remote_code=trust_remote_code,
                                         show_progress=show_progress, original_tokenizer=tokenizer)
            log(verify_table(results))
            report["verify"] = {lang: r.as_dict() for lang, r in results.items()}
            seconds["verify"] = time.perf_counter() - start
            failed = [lang for lang, r in results.items() if not r.passed]
            if failed:
                raise EquivalenceError(f"the trimmed model differs from {model_name} on covered text of "
                                       f"{', '.join(failed)}; {out} was not written (a bug: please report it)")
        report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        report["old_ids"] = kept_ids.tolist()
        (tmp / "trim_report.json").write_text(report_json(report), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(report), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------
# Model card


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def model_card(report: dict) -> str:
    """README.md: what was trimmed, with the figures of trim_report.json as tables."""
    pb, pa = report["params_before"], report["params_after"]
    langs = ", ".join(report["languages"])
    lines = [
        "---", "tags: [polyglot-distil, vocabulary-trimming]", f"base_model: {report['source']}",
        f"language: [{langs}]", "---",
        f"# {report['source']}, vocabulary trimmed to {langs}", "",
        f"The vocabulary of `{report['source']}` reduced to the tokens that {langs} use "
        "(Abdaoui et al. 2020, \"Load What You Need\"), by `polyglot-distil trim`. On text the kept vocabulary "
        "covers, tokenization, hidden states and MLM logits over the kept tokens are exactly those of the source.",
        "", "| | source | trimmed | change |", "| --- | ---: | ---: | ---: |",
        f"| parameters | {pb:,} | {pa:,} | {-100 * report['reduction']:+.1f}% |",
        f"| vocabulary | {report['vocab_size_before']:,} | {report['vocab_size_after']:,} | "
        f"{100 * (report['vocab_size_after'] / report['vocab_size_before'] - 1):+.1f}% |",
        f"| embedding share of parameters | {100 * report['embedding_share_before']:.1f}% | "
        f"{100 * report['embedding_share_after']:.1f}% | |",
        f"| weights ({report['dtype']}) | {_mb(report['weights_bytes_before'])} | "
        f"{_mb(report['weights_bytes_after'])} | |",
        f"| folder on disk | | {_mb(report.get('folder_bytes_after'))} | |",
        "", "## Kept tokens", "",
        f"Rules (a token must pass all of them in a language; languages are united): `{report['selection']['rules']}`.",
        "", "| language | selected | only this language |", "| --- | ---: | ---: |",
    ]
    for lang, r in report["selection"]["languages"].items():
        lines.append(f"| {lang} | {r['selected']:,} | {r['only_this_language']:,} |")
    for group, g in report["selection"]["always_kept"].items():
        lines.append(f"| always kept: {group.replace('_', ' ')} | +{g['added']:,} | |")
    if report.get("verify"):
        lines += ["", "## Quick verification (sample of the counted corpus)", "",
                  "| language | texts | covered | identical tokenization | max abs diff hidden | "
                  "max abs diff MLM logits |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for lang, v in report["verify"].items():
            logits = "-" if v["max_logit_diff"] is None else f"{v['max_logit_diff']:g}"
            lines.append(f"| {lang} | {v['texts']:,} | {100 * v['covered_share']:.1f}% | "
                         f"{100 * v['identical_share']:.1f}% | {v['max_hidden_diff']:g} | {logits} |")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModel, AutoTokenizer",
              'tokenizer = AutoTokenizer.from_pretrained("PATH")', 'model = AutoModel.from_pretrained("PATH")', "```",
              "", "`trim_report.json` maps each new id to the source's id (`old_ids`).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def add_trim_parser(subparsers) -> None:
    p = subparsers.add_parser("trim", help="keep the vocabulary some languages use (model + tokenizer)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub name or model folder (WordPiece or Unigram tokenizer)")
    p.add_argument("--counts", required=True, help="counts file written by 'polyglot-distil count'")
    p.add_argument("--langs", required=True, help="comma-separated languages of the counts to keep, e.g. en,fr")
    p.add_argument("--out", required=True, help="the folder to write")
    rules = p.add_argument_group("selection rules (per language all must hold; languages are united; "
                                 f"default: --min-line-share {GEOTREND_LINE_SHARE})")
    rules.add_argument("--min-count", type=int, help="minimum occurrences in the language")
    rules.add_argument("--min-line-share", type=float,
                       help=f"minimum share of the language's lines holding it (Geotrend: {GEOTREND_LINE_SHARE})")
    rules.add_argument("--min-prob", type=float, help=f"minimum unigram probability (BiStil: {BISTIL_MIN_PROB})")
    rules.add_argument("--coverage", type=float, help="keep the fewest tokens covering this share of occurrences")
    rules.add_argument("--top-n", type=int, help="keep the N most frequent tokens of each language")
    rules.add_argument("--keep", action="append", default=[], metavar="TOKEN", help="always keep TOKEN (repeatable)")
    rules.add_argument("--keep-file", help="always keep the tokens of this file (one per line)")
    rules.add_argument("--keep-chars", action="store_true",
                       help="always keep single-character tokens (and ##x / ▁x), so no word becomes unknown")
    check = p.add_argument_group("quick verification (default: the first lines of the counted corpus)")
    check.add_argument("--verify-lang", action="append", default=[], metavar="LANG=SOURCE",
                       help="verify on this text instead of the counted sources")
    check.add_argument("--verify-lines", type=int, default=100, help="lines per language to verify on")
    check.add_argument("--no-verify", action="store_true", help="skip the quick verification")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_trim)


def _keep_tokens(args) -> list[str]:
    tokens = list(args.keep)
    if args.keep_file:
        path = Path(args.keep_file)
        if not path.is_file():
            raise UserError(f"--keep-file: {path} not found")
        tokens += [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tokens


def verification_texts(specs: list[str], counts: Counts, langs: list[str], max_lines: int) -> dict[str, list[str]]:
    """The first `max_lines` lines of each language: from `--verify-lang` specs, else from the
    sources the counts were made from."""
    if max_lines < 1:
        raise UserError("--verify-lines must be at least 1")
    caps = Caps(max_lines=max_lines, sample="head")
    if specs:
        return {lang: list(iter_language(sources, caps)) for lang, sources in group_lang_specs(specs).items()}
    texts = {}
    for lang in langs:
        recorded = counts.totals[lang].sources if lang in counts.totals else []
        try:
            if not recorded:
                raise UserError("the counts name no source")
            texts[lang] = list(iter_language(parse_sources(recorded), caps))
        except UserError as exc:
            raise UserError(f"cannot read the counted corpus of {lang} for the quick verification ({exc}); "
                            "pass --verify-lang LANG=SOURCE or --no-verify") from None
    return texts


def run_trim(args) -> int:
    check_writable(args.out, args.overwrite)
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    if not langs:
        raise UserError("--langs: name at least one language, e.g. --langs en,fr")
    rules = Rules(min_count=args.min_count, min_line_share=args.min_line_share, min_prob=args.min_prob,
                  coverage=args.coverage, top_n=args.top_n, keep_tokens=_keep_tokens(args), keep_chars=args.keep_chars)
    rules.validate()
    counts = read_counts(args.counts)
    missing = [lang for lang in langs if lang not in counts.occurrences]
    if missing:
        raise UserError(f"language {missing[0]!r} is not in {args.counts} (it has: {', '.join(counts.languages)})")
    texts = None if args.no_verify else verification_texts(args.verify_lang, counts, langs, args.verify_lines)
    report = trim(args.model, counts, langs, rules, args.out, counts_path=args.counts, overwrite=args.overwrite,
                  verify_texts=texts, trust_remote_code=args.trust_remote_code,
                  show_progress=False if args.no_progress else None)
    print(selection_table(report["selection"]))
    print(f"parameters {report['params_before']:,} -> {report['params_after']:,} "
          f"(-{100 * report['reduction']:.1f}%), vocabulary {report['vocab_size_before']:,} -> "
          f"{report['vocab_size_after']:,}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()))
    print(f"wrote {args.out}")
    return 0
