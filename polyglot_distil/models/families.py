"""What polyglot-distil knows about each encoder family, in one place: where the layers live and
how a student keeps some of them, the per-layer configuration lists, the masked-LM head, the
query/key/value projections, the position offset, and which attention implementation runs.

    from polyglot_distil.models.families import family_of
    family = family_of(model.config)        # FAMILIES["modernbert"], or GENERIC for a model type not listed
    family.layers(model)                    # one module per layer (ALBERT: the shared layer, repeated)
    family.mlm_logits(model, hidden)        # [..., H] -> [..., V]

Adding a family is one `Family` entry in FAMILIES (and its row in tests/test_families.py's
matrix). A model type not listed gets GENERIC: today's guesses (a ModuleList of
num_hidden_layers layers, the one child besides the encoder as the head, the usual projection
names), which serve BERT-like encoders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from polyglot_distil.errors import UserError

# (query, key, value) projection names the generic family looks for: BERT, XLM-R and E5; most newer
# encoders; DistilBERT
PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))


@dataclass(frozen=True)
class Family:
    """One encoder family. Paths are attribute paths from the model's `base_model`."""

    name: str  # as messages and the README say it
    model_types: tuple[str, ...]  # config.model_type values
    checkpoints: tuple[str, ...] = ()  # real multilingual checkpoints it serves (the README's table)
    layer_list: str | None = "encoder.layer"  # the ModuleList of layers; None: search (GENERIC)
    layer_key: str = r"\.layer\.(\d+)\."  # a layer tensor's name in the state dict, layer number captured
    shared_layers: bool = False  # ALBERT: one layer group run num_hidden_layers times
    per_layer_config: tuple[str, ...] = ()  # config lists with one entry per layer (ModernBERT layer_types)
    head: tuple[str, ...] | None = None  # children of the ...ForMaskedLM model applied in order; None: the one child
    head_call: Callable | None = None  # (model, hidden) -> logits where the head is more than a chain
    projections: tuple[str, ...] | None = None  # (q, k, v) names, or one fused q|k|v name; None: PROJECTION_NAMES
    pad_offset_positions: bool = False  # RoBERTa-style position ids start after the pad id
    sdpa: bool = True  # has the fast attention; attention maps always need eager
    bert_layout: bool = False  # layers laid out as BERT's (attention.self.query, ..., output.dense): --init importance
    mlm_architectures: tuple[str, ...] = ("ForMaskedLM", "ForPreTraining")  # class-name ends with an MLM head

    # -- layers ---------------------------------------------------------------------------------

    def layers(self, model) -> list:
        """One module per encoder layer, num_hidden_layers of them (ALBERT: the same shared layer
        group at every depth)."""
        import torch

        count = model.config.num_hidden_layers
        if self.shared_layers:  # ALBERT: layer i runs group int(i / (layers / groups))
            groups = model.base_model.encoder.albert_layer_groups
            return [groups[int(i / (count / len(groups)))] for i in range(count)]
        if self.layer_list is not None:
            return list(_attribute(model.base_model, self.layer_list))
        for module in model.base_model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == count:
                return list(module)
        raise UserError(f"{type(model).__name__}: found no list of its {count} transformer layers")

    def layer_number(self, tensor_name: str):
        """The match of a layer tensor's name (group 1: the layer number), or None (shared ALBERT
        layers and everything outside the layers)."""
        return None if self.shared_layers else re.search(self.layer_key, tensor_name)

    def slice_config(self, config, kept: list[int]) -> None:
        """A student's configuration whose layer j is teacher layer kept[j]: its per-layer lists
        (ModernBERT's layer_types: local or global attention) follow the kept layers."""
        for key in self.per_layer_config:
            values = getattr(config, key, None)
            if values is not None:
                # set together with the depth: the configuration checks that they agree
                config.__dict__[key] = [values[k] for k in kept]
        config.num_hidden_layers = len(kept)

    # -- masked-LM head -------------------------------------------------------------------------

    def head_modules(self, model) -> list:
        """The modules that make the masked-LM head of a `...ForMaskedLM` model; [] without one
        (a bare encoder; GENERIC: unless exactly one child besides the encoder)."""
        if model is model.base_model or model.get_output_embeddings() is None:
            return []
        if self.head is not None and self.head_call is None:
            return [getattr(model, name) for name in self.head]
        children = [m for m in model.children() if m is not model.base_model]
        return children if self.head_call is not None or len(children) == 1 else []

    def mlm_head(self, model) -> list:
        """`head_modules`, or one line saying that the model has no masked-LM head."""
        modules = self.head_modules(model)
        if not modules:
            raise UserError(f"{type(model).__name__} has no masked-LM head; the logit and MLM losses need one "
                            "(the hidden and attention losses, --recipe bistil, do not)")
        return modules

    def mlm_logits(self, model, hidden):
        """The masked-LM head on `hidden` [..., H]: logits [..., V]."""
        modules = self.mlm_head(model)
        if self.head_call is not None:
            return self.head_call(model, hidden)
        for module in modules:
            hidden = module(hidden)
        return hidden

    def has_mlm_head(self, config) -> bool:
        """Whether the checkpoint `config` describes has a masked-LM head."""
        return any(a.endswith(self.mlm_architectures) for a in getattr(config, "architectures", None) or [])

    # -- attention ------------------------------------------------------------------------------

    def projections_of(self, model, layer: int) -> tuple:
        """(the module(s) whose outputs are the queries, keys and values of layer `layer`, fused):
        three nn.Linear, or one whose output is q|k|v along the last dimension (fused True)."""
        import torch

        names_tried = [self.projections] if self.projections else list(PROJECTION_NAMES)
        for module in self.layers(model)[layer].modules():
            for names in names_tried:
                if all(isinstance(getattr(module, name, None), torch.nn.Linear) for name in names):
                    return tuple(getattr(module, name) for name in names), len(names) == 1
        raise UserError(f"{type(model).__name__}: its self-attention has no query/key/value projections that "
                        f"polyglot-distil knows ({', '.join('/'.join(n) for n in names_tried)}); the relation "
                        "loss reads them")

    def attention_implementation(self, maps: bool) -> str:
        """"eager" where attention maps are read (no fast kernel returns them) or the family has no
        fast attention (DeBERTa-v2, RemBERT); else "sdpa"."""
        return "eager" if maps or not self.sdpa else "sdpa"

    def max_positions(self, config) -> int:
        """Longest input the model takes, in tokens (RoBERTa-style ids cost pad_token_id + 1)."""
        limit = int(getattr(config, "max_position_embeddings", 0) or 10**9)
        return limit - (config.pad_token_id + 1 if self.pad_offset_positions else 0)


def _attribute(root, path: str):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _deberta_head(model, hidden):
    # the legacy head is a plain module; the newer one also takes the word embeddings it ties to
    if model.config.legacy:
        return model.cls(hidden)
    return model.lm_predictions(hidden, model.deberta.embeddings.word_embeddings)


GENERIC = Family("generic", (), layer_list=None)  # the old guesses: search the layers, one head child

FAMILIES = {family.name: family for family in (
    Family("bert", ("bert",), ("bert-base-multilingual-cased", "LaBSE", "multilingual-e5-small"), head=("cls",),
           projections=("query", "key", "value"), bert_layout=True),
    Family("xlm-roberta", ("xlm-roberta", "roberta", "camembert"),
           ("xlm-roberta-base", "multilingual-e5-base/large", "bge-m3"), head=("lm_head",),
           projections=("query", "key", "value"), pad_offset_positions=True, bert_layout=True),
    Family("xlm-roberta-xl", ("xlm-roberta-xl",), ("xlm-roberta-xl", "xlm-roberta-xxl"), head=("lm_head",),
           projections=("query", "key", "value"), pad_offset_positions=True),
    Family("distilbert", ("distilbert",), ("distilbert-base-multilingual-cased",), layer_list="transformer.layer",
           head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
           projections=("q_lin", "k_lin", "v_lin")),
    Family("electra", ("electra",), ("electra generators and discriminators",),
           head=("generator_predictions", "generator_lm_head"), projections=("query", "key", "value"),
           bert_layout=True, mlm_architectures=("ForMaskedLM",)),  # ElectraForPreTraining: the discriminator
    Family("albert", ("albert",), ("albert-base-v2 (English; multilingual ALBERTs)",), layer_list=None,
           shared_layers=True, head=("predictions",), projections=("query", "key", "value")),
    Family("deberta-v2", ("deberta-v2",), ("mdeberta-v3-base",), head_call=_deberta_head,
           projections=("query_proj", "key_proj", "value_proj"), sdpa=False),
    Family("modernbert", ("modernbert",), ("mmBERT-small", "mmBERT-base"), layer_list="layers",
           layer_key=r"\.layers\.(\d+)\.", per_layer_config=("layer_types",), head=("head", "decoder"),
           projections=("Wqkv",)),
    Family("rembert", ("rembert",), ("rembert",), head=("cls",), projections=("query", "key", "value"), sdpa=False,
           bert_layout=True),
)}

_BY_MODEL_TYPE = {t: family for family in FAMILIES.values() for t in family.model_types}


def runnable_attention(config, wanted: str) -> str:
    """The attention implementation to load a model of `config` with when `wanted` is asked for:
    "sdpa" falls back to "eager" in a family without the fast attention (DeBERTa-v2, RemBERT)."""
    return family_of(config).attention_implementation(maps=False) if wanted == "sdpa" else wanted


def family_of(config) -> Family:
    """The family of a model's configuration (a model works too); GENERIC when not listed."""
    config = getattr(config, "config", config)
    return _BY_MODEL_TYPE.get(getattr(config, "model_type", None), GENERIC)
