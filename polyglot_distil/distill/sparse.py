"""Lottery-ticket sparse fine-tuning (Ansell et al. 2022; BiStil's task phase): which entries of a
model are trained, theta0 and the mask.

After a first stage of full fine-tuning, the K entries of the body with the largest |theta -
theta0| form the mask; every parameter returns to theta0 and a second stage trains only the
mask (and the head). The parameters of a classifier built on a phase-1 student fall in three
groups (`ParameterGroups`):

    head        what the student did not have: the classification head (and BERT's pooler),
                newly initialised; trained densely in both stages, reset to theta0 in between
    selectable  the rest of the body (embeddings optional), from which the K entries are chosen
    frozen      LayerNorm weights (and the embeddings when they are excluded): never trained

The trained model is saved as a sparse difference from the phase-1 student (`diff.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polyglot_distil.errors import UserError


# ---------------------------------------------------------------------------------------------
# Which parameters


@dataclass
class ParameterGroups:
    """Parameter names of a classifier, by role (see the module docstring); model order."""

    head: list[str]
    selectable: list[str]
    frozen: list[str]


def _is_layer_norm(module_name: str, module) -> bool:
    lowered = module_name.lower()
    return isinstance(module, torch.nn.LayerNorm) or "layernorm" in lowered or "layer_norm" in lowered


def parameter_groups(model, new_names: set[str], include_embeddings: bool = True) -> ParameterGroups:
    """Split `model`'s parameters: `new_names` (newly initialised on load) and everything outside
    `model.base_model` are the head; LayerNorm (and, unless `include_embeddings`, the embedding
    module) are frozen; the rest of the body is selectable."""
    body = {id(p) for p in model.base_model.parameters()}
    embeddings = getattr(model.base_model, "embeddings", None)
    embedding_ids = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    norms = {id(p) for name, module in model.named_modules() if _is_layer_norm(name, module)
             for p in module.parameters(recurse=False)}
    groups = ParameterGroups([], [], [])
    for name, param in model.named_parameters():
        if name in new_names or id(param) not in body:
            groups.head.append(name)
        elif id(param) in norms or (not include_embeddings and id(param) in embedding_ids):
            groups.frozen.append(name)
        else:
            groups.selectable.append(name)
    return groups


def sparse_count(density: float | None, count: int | None, selectable: int, what: str) -> int:
    """K: `count` if given, else floor(density x selectable); one clear line when it is 0 or more
    than the selectable entries."""
    if count is None:
        if density is None or not density > 0:
            raise UserError(f"--density must be positive, not {density}")
        k = int(density * selectable)
        given = f"--density {density:g} selects K = {k:,}"
    else:
        k, given = count, f"--sparse-params asks for K = {count:,}"
    if k > selectable:
        raise UserError(f"{given} entries, more than the {selectable:,} selectable parameters of {what}; "
                        "lower it (or include the embeddings)")
    if k < 1:
        raise UserError(f"{given} entries of the {selectable:,} selectable parameters of {what}; raise it")
    return k


def top_k_mask(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Bool masks, shaped like `scores`, with True at exactly the `k` largest scores of all
    tensors together. Ties at the threshold go to the first entries in (tensor, flat index)
    order, so the choice is exact and reproducible."""
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    if not 1 <= k <= flat.numel():
        raise ValueError(f"k = {k} outside 1..{flat.numel()}")
    if not torch.isfinite(flat).all():
        raise UserError("training diverged (weights are NaN or infinite) before the mask could be chosen; "
                        "lower --lr")
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values  # the k-th largest
    chosen = flat > threshold
    short = k - int(chosen.sum())
    if short:
        chosen[torch.nonzero(flat == threshold).squeeze(1)[:short]] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


# ---------------------------------------------------------------------------------------------
# The ticket: theta0 and the mask of one training run


class LotteryTicket:
    """theta0 of every trained parameter (CPU) and, once chosen, the mask of the selectable ones
    (bool, on the model's device). `model` is the module being trained (not a DDP wrapper).

    A parameter may hold only some rows of the tensor it stands for (`train_rows`: the embedding
    rows the training pairs use, `--reduce-vocab`); theta0 and the mask stay full-size, and the
    rows it lacks count as unmoved, which they are in full training (no gradient, no weight
    decay in phase 2): K, the choice (ties included) and the diff are full training's."""

    def __init__(self, model, groups: ParameterGroups, k: int):
        self.model, self.groups, self.k = model, groups, k
        params = dict(model.named_parameters())
        self.trained = groups.head + groups.selectable
        self.theta0 = {n: params[n].detach().to("cpu", copy=True) for n in self.trained}
        self.mask: dict[str, torch.Tensor] | None = None
        self.rows: dict[str, torch.Tensor] = {}  # {name: the rows of theta0 the parameter holds}
        self._held_masks: dict[str, torch.Tensor] | None = None  # the mask, as the parameters hold it

    def train_rows(self, name: str, rows) -> None:
        """From now on parameter `name` holds only `rows` (ascending ids) of its theta0."""
        self.rows[name] = torch.as_tensor(rows, dtype=torch.long)

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.named_parameters())

    def _held(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """The part of a full-size tensor (theta0, a mask) that parameter `name` holds."""
        return full.index_select(0, self.rows[name].to(full.device)) if name in self.rows else full

    @torch.no_grad()
    def choose(self) -> None:
        """The mask: the K selectable entries that moved most from theta0."""
        params = self._params()
        changes = {}
        for name in self.groups.selectable:
            param = params[name].detach()
            moved = (param - self._held(name, self.theta0[name]).to(param.device)).abs()
            if name in self.rows:  # rows it does not hold have not moved
                moved = torch.zeros(self.theta0[name].shape, dtype=moved.dtype, device=param.device).index_copy_(
                    0, self.rows[name].to(param.device), moved)
            changes[name] = moved
        self.mask, self._held_masks = top_k_mask(changes, self.k), None

    @torch.no_grad()
    def reset(self) -> None:
        """Every trained parameter, the head included, back to theta0."""
        params = self._params()
        for name in self.trained:
            params[name].copy_(self._held(name, self.theta0[name]))

    def switch(self, optimizer) -> None:
        """From stage 1 to stage 2: choose the mask, reset to theta0, and clear the optimizer's
        state, which makes it a fresh AdamW (its moments restart at zero, so entries outside the
        mask, whose gradients are zero from then on, never move)."""
        self.choose()
        self.reset()
        optimizer.state.clear()

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Exact zeros outside the mask (masked_fill, so a NaN or inf there cannot leak through a
        product): with zero gradients from a fresh AdamW state, its moments there stay zero and
        the entries keep theta0 bit for bit."""
        params = self._params()
        if self._held_masks is None:
            self._held_masks = {name: self._held(name, mask) for name, mask in self.mask.items()}
        for name, mask in self._held_masks.items():
            grad = params[name].grad
            if grad is not None:
                grad.masked_fill_(~mask, 0)

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"theta0.{n}": t for n, t in self.theta0.items()}
        if self.mask is not None:
            tensors.update({f"mask.{n}": m for n, m in self.mask.items()})
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        params = self._params()
        self.theta0 = {n: tensors[f"theta0.{n}"] for n in self.trained}
        if f"mask.{self.groups.selectable[0]}" in tensors:
            self.mask = {n: tensors[f"mask.{n}"].to(params[n].device) for n in self.groups.selectable}
            self._held_masks = None


