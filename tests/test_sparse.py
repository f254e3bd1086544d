"""Lottery-ticket pieces: the mask has exactly K entries, the largest changes, ties included; the
parameter groups (head, selectable, frozen) of BERT and XLM-R classifiers built on masked-LM
students; after the switch, AdamW leaves every entry outside the mask bitwise at theta0; theta0
and the mask survive a checkpoint; the sparse diff rebuilds a model bit for bit and only on its
own base. (A whole `distil task` run is tested in test_distil_task.py.)"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from conftest import run_cli
from polyglot_distil.models.classifier import new_classifier
from polyglot_distil.distill.diff import apply_diff, write_diff
from polyglot_distil.distill.sparse import (LotteryTicket, ParameterGroups, _is_layer_norm,
                                           parameter_groups, sparse_count, top_k_mask)
from polyglot_distil.errors import UserError
from polyglot_distil.fingerprints import body_fingerprint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def classifier_on(student_dir, include_embeddings=True, seed=0):
    model, new = new_classifier(str(student_dir), seed, attn_implementation="eager")
    return model, parameter_groups(model, new, include_embeddings)


def train_steps(model, optimizer, steps: int, ticket: LotteryTicket | None = None, seed: int = 0,
                poison_outside: bool = False) -> None:
    """`steps` AdamW steps of cross-entropy on random token ids and labels; with `ticket`, the
    gradients masked as in stage 2 (after, with `poison_outside`, NaN is written outside the mask)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    model.train()
    for _ in range(steps):
        ids = torch.randint(5, vocab, (8, 12), generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        loss.backward()
        if ticket is not None:
            params = dict(model.named_parameters())
            if poison_outside:
                for name, mask in ticket.mask.items():
                    params[name].grad[~mask] = float("nan")
            ticket.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def adamw(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)


def outside_mask_equal_theta0(model, ticket) -> bool:
    params = dict(model.named_parameters())
    return all(torch.equal(params[n].detach()[~m], ticket.theta0[n][~m]) for n, m in ticket.mask.items())


# ---------------------------------------------------------------------------------------------
# Choosing the entries


def test_mask_has_exactly_k_entries_and_they_are_the_largest():
    generator = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(40, 7, generator=generator), "b": torch.rand(101, generator=generator)}
    masks = top_k_mask(scores, 57)
    assert sum(int(m.sum()) for m in masks.values()) == 57
    chosen = torch.cat([s[m] for s, m in zip(scores.values(), masks.values())])
    left = torch.cat([s[~m] for s, m in zip(scores.values(), masks.values())])
    assert chosen.min() > left.max()
    assert all(masks[n].shape == scores[n].shape and masks[n].dtype == torch.bool for n in scores)


def test_ties_at_the_threshold_still_give_exactly_k_the_first_in_order():
    # Entries that never moved all score 0: K may cut through them.
    scores = {"moved": torch.tensor([0.5, 0.0, 0.2]), "still": torch.zeros(2, 3)}
    masks = top_k_mask(scores, 4)
    assert masks["moved"].tolist() == [True, True, True]  # the two that moved, then the first tie
    assert masks["still"].tolist() == [[True, False, False], [False, False, False]]


def test_k_larger_than_the_selectable_parameters_is_an_error():
    with pytest.raises(Exception, match="more than the 1,000 selectable parameters of the body"):
        sparse_count(None, 1001, 1000, "the body")
    with pytest.raises(Exception, match="--density 1.5 selects K = 1,500"):
        sparse_count(1.5, None, 1000, "the body")
    assert sparse_count(0.08, None, 1000, "the body") == 80


def test_a_density_selecting_nothing_is_an_error():
    with pytest.raises(Exception, match="selects K = 0"):
        sparse_count(0.0001, None, 1000, "the body")


# ---------------------------------------------------------------------------------------------
# Parameter groups


@pytest.mark.parametrize("family, head", [
    ("bert", ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]),
    ("xlmr", ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
              "classifier.out_proj.bias"]),
])
def test_head_is_what_the_masked_lm_student_lacked(family, head, tiny_bert_dir, tiny_xlmr_dir):
    _, groups = classifier_on(tiny_bert_dir if family == "bert" else tiny_xlmr_dir)
    assert sorted(groups.head) == sorted(head)


def test_layer_norm_is_frozen_and_embeddings_are_selectable_by_default(tiny_bert_dir):
    _, groups = classifier_on(tiny_bert_dir)
    assert groups.frozen and all("LayerNorm" in n for n in groups.frozen)
    assert not any("LayerNorm" in n for n in groups.selectable)
    assert "bert.embeddings.word_embeddings.weight" in groups.selectable
    assert "bert.encoder.layer.0.attention.self.query.weight" in groups.selectable


def test_excluded_embeddings_are_frozen(tiny_bert_dir):
    _, groups = classifier_on(tiny_bert_dir, include_embeddings=False)
    assert "bert.embeddings.word_embeddings.weight" in groups.frozen
    assert not any(".embeddings." in n for n in groups.selectable)


def test_new_head_is_the_same_for_the_same_seed(tiny_bert_dir):
    a, _ = classifier_on(tiny_bert_dir, seed=3)
    b, _ = classifier_on(tiny_bert_dir, seed=3)
    c, _ = classifier_on(tiny_bert_dir, seed=4)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


# ---------------------------------------------------------------------------------------------
# Stage 2 keeps theta0 outside the mask


@pytest.fixture(scope="module")
def stage_one(tiny_bert_dir, one_torch_thread):
    """A classifier after 5 full AdamW steps (its moments non-zero everywhere), its ticket, its
    optimizer: trained once per module."""
    model, groups = classifier_on(tiny_bert_dir)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in groups.frozen)
    selectable = sum(p.numel() for n, p in model.named_parameters() if n in groups.selectable)
    ticket = LotteryTicket(model, groups, sparse_count(0.08, None, selectable, "the body"))
    optimizer = adamw(model)
    train_steps(model, optimizer, 5)
    return model, ticket, optimizer


@pytest.fixture()
def after_stage_one(stage_one):
    """Each test's own copy of `stage_one`, copied as one object so that the ticket and the
    optimizer hold the copy's parameters."""
    model, ticket, optimizer = copy.deepcopy(stage_one)
    assert ticket.model is model and optimizer.param_groups[0]["params"][0] is next(model.parameters())
    return model, ticket, optimizer


def test_stage_one_moments_left_in_adamw_would_move_entries_outside_the_mask(after_stage_one):
    model, ticket, optimizer = after_stage_one
    ticket.choose()
    ticket.reset()  # but the optimizer keeps its state: the drift the switch must prevent
    train_steps(model, optimizer, 2, ticket, seed=1)
    assert not outside_mask_equal_theta0(model, ticket)


def test_after_the_switch_entries_outside_the_mask_stay_bitwise_theta0(after_stage_one):
    model, ticket, optimizer = after_stage_one
    ticket.switch(optimizer)
    assert sum(int(m.sum()) for m in ticket.mask.values()) == ticket.k
    train_steps(model, optimizer, 4, ticket, seed=1, poison_outside=True)
    assert outside_mask_equal_theta0(model, ticket)
    params = dict(model.named_parameters())
    moved = sum(int((params[n].detach()[m] != ticket.theta0[n][m]).sum()) for n, m in ticket.mask.items())
    assert moved > 0.9 * ticket.k  # while the chosen entries trained
    assert not torch.equal(params["classifier.weight"].detach(), ticket.theta0["classifier.weight"])


def test_switch_resets_every_trained_parameter_to_theta0(after_stage_one):
    model, ticket, optimizer = after_stage_one
    ticket.switch(optimizer)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n].detach(), ticket.theta0[n]) for n in ticket.trained)
    assert len(optimizer.state) == 0


@pytest.mark.slow
def test_theta0_and_mask_survive_a_checkpoint(after_stage_one, tiny_bert_dir):
    model, ticket, optimizer = after_stage_one
    ticket.switch(optimizer)
    fresh_model, groups = classifier_on(tiny_bert_dir, seed=9)  # another head: theta0 must come from the state
    restored = LotteryTicket(fresh_model, groups, ticket.k)
    restored.load_state({k: v.clone() for k, v in ticket.state().items()})
    assert all(torch.equal(restored.theta0[n], ticket.theta0[n]) for n in ticket.trained)
    assert all(torch.equal(restored.mask[n], ticket.mask[n]) for n in ticket.mask)


# ---------------------------------------------------------------------------------------------
# The sparse diff


@pytest.fixture()
def diff_dir(tmp_path, after_stage_one, tiny_bert_dir):
    """A diff of a model trained 3 masked steps after the switch; returns (folder, its weights)."""
    model, ticket, optimizer = after_stage_one
    ticket.switch(optimizer)
    body = [n for n, _ in model.named_parameters() if n not in ticket.groups.head]
    fingerprint = body_fingerprint(dict(model.named_parameters()), body)  # at theta0: the student's body
    train_steps(model, optimizer, 3, ticket, seed=2)
    model.config.to_json_file(tmp_path / "config.json")
    folder = tmp_path / "diff"
    folder.mkdir()
    write_diff(folder, model.state_dict(), ticket, tmp_path / "config.json",
               {"base": str(tiny_bert_dir), "base_fingerprint": fingerprint, "density": 0.08})
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def test_diff_holds_k_indices_and_values_and_the_whole_head(diff_dir):
    from safetensors.torch import load_file

    folder, weights = diff_dir
    record = json.loads((folder / "sparse_diff.json").read_text())
    tensors = load_file(folder / "diff.safetensors")
    assert sum(len(tensors[f"body.{n}.indices"]) for n in record["body"]) == record["k"]
    assert all(torch.equal(tensors[f"head.{n}"], weights[n]) for n in record["head"])
    assert record["k"] == int(0.08 * record["selectable"])


def test_diff_applied_to_the_student_rebuilds_the_model_bit_for_bit(diff_dir, tiny_bert_dir):
    folder, weights = diff_dir
    rebuilt, _ = apply_diff(str(tiny_bert_dir), folder)
    state = rebuilt.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)


def test_a_model_moved_outside_its_mask_gives_no_diff(tmp_path, after_stage_one):
    model, ticket, optimizer = after_stage_one
    ticket.switch(optimizer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    name = ticket.groups.selectable[0]
    outside = torch.nonzero(~ticket.mask[name].reshape(-1))[0]
    weights[name].view(-1)[outside] += 1.0
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(RuntimeError, match="outside the mask moved"):
        write_diff(tmp_path, weights, ticket, tmp_path / "config.json", {"base_fingerprint": ""})


def test_apply_diff_to_another_base_is_an_error(diff_dir, tmp_path, tiny_bert_dir, capsys):
    from safetensors.torch import load_file, save_file

    folder, _ = diff_dir
    other = tmp_path / "other-student"
    shutil.copytree(tiny_bert_dir, other)
    weights = load_file(other / "model.safetensors")
    weights["bert.encoder.layer.0.output.dense.bias"] += 1e-3
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    assert run_cli("apply-diff", "--student", other, "--diff", folder, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "not the model this diff" in err, err
    assert not (tmp_path / "out").exists()


def test_apply_diff_without_a_diff_folder_is_an_error(tmp_path, tiny_bert_dir, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("apply-diff", "--student", tiny_bert_dir, "--diff", tmp_path / "empty", "--out", tmp_path / "out") == 2
    assert "not a sparse diff folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The same rules on hand-made tensors and a hand-made model (milliseconds: no model is built)


class _Body(torch.nn.Module):
    def __init__(self, embeddings: bool = True):
        super().__init__()
        if embeddings:
            self.embeddings = torch.nn.Embedding(4, 2)
        self.dense = torch.nn.Linear(2, 2)
        self.norm = torch.nn.LayerNorm(2)  # a LayerNorm by its type
        self.final_layer_norm = torch.nn.Linear(2, 2, bias=False)  # by its name only


class _Classifier(torch.nn.Module):
    """`base_model` the body, a head outside it, as Hugging Face's classifiers are built."""

    def __init__(self, embeddings: bool = True):
        super().__init__()
        self.body = _Body(embeddings)
        self.head = torch.nn.Linear(2, 3)

    @property
    def base_model(self):
        return self.body


def test_layer_norm_is_recognised_by_its_type_or_by_either_spelling_of_its_name():
    linear = torch.nn.Linear(2, 2)
    assert _is_layer_norm("encoder.LayerNorm", linear)
    assert _is_layer_norm("decoder.final_layer_norm", linear)
    assert _is_layer_norm("output.dense", torch.nn.LayerNorm(2))
    assert not _is_layer_norm("output.dense", linear)
    assert not _is_layer_norm("", linear)


def test_groups_are_new_names_and_non_body_as_head_norms_frozen_rest_selectable_in_model_order():
    groups = parameter_groups(_Classifier(), {"body.dense.bias"})
    assert groups == ParameterGroups(
        head=["body.dense.bias", "head.weight", "head.bias"],
        selectable=["body.embeddings.weight", "body.dense.weight"],
        frozen=["body.norm.weight", "body.norm.bias", "body.final_layer_norm.weight"])


def test_excluding_embeddings_freezes_them_only():
    groups = parameter_groups(_Classifier(), set(), include_embeddings=False)
    assert groups == ParameterGroups(
        head=["head.weight", "head.bias"], selectable=["body.dense.weight", "body.dense.bias"],
        frozen=["body.embeddings.weight", "body.norm.weight", "body.norm.bias", "body.final_layer_norm.weight"])


def test_a_body_without_embeddings_is_split_the_same_with_or_without_them():
    for include in (True, False):
        groups = parameter_groups(_Classifier(embeddings=False), set(), include_embeddings=include)
        assert groups == ParameterGroups(
            head=["head.weight", "head.bias"], selectable=["body.dense.weight", "body.dense.bias"],
            frozen=["body.norm.weight", "body.norm.bias", "body.final_layer_norm.weight"])


def test_sparse_count_takes_the_count_over_the_density_and_allows_1_to_all_entries():
    assert sparse_count(None, 1000, 1000, "the body") == 1000
    assert sparse_count(None, 1, 1000, "the body") == 1
    assert sparse_count(0.5, 7, 1000, "the body") == 7
    assert sparse_count(1.0, None, 1000, "the body") == 1000
    assert sparse_count(0.0015, None, 1000, "the body") == 1  # floor of 1.5


@pytest.mark.parametrize("density, count, message", [
    (None, None, "--density must be positive, not None"),
    (0.0, None, "--density must be positive, not 0.0"),
    (-0.1, None, "--density must be positive, not -0.1"),
    (None, 0, "--sparse-params asks for K = 0 entries of the 1,000 selectable parameters of the body; raise it"),
    (None, 1001, "--sparse-params asks for K = 1,001 entries, more than the 1,000 selectable parameters of the "
                 "body; lower it (or include the embeddings)"),
    (0.0005, None, "--density 0.0005 selects K = 0 entries of the 1,000 selectable parameters of the body; "
                   "raise it"),
])
def test_sparse_count_names_what_was_asked_and_what_to_change(density, count, message):
    with pytest.raises(UserError) as raised:
        sparse_count(density, count, 1000, "the body")
    assert str(raised.value) == message


def test_body_fingerprint_is_the_sha256_of_names_dtypes_shapes_and_bytes_in_name_order():
    weights = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor([1, 2], dtype=torch.int16),
               "c": torch.ones(2)}
    expected = "48fa5b70cc1eb76eb1d8337d94570e001726409d89bbbd4c7ea028846d87aa7b"  # hashlib by hand, once
    assert body_fingerprint(weights, ["b", "a"]) == expected
    assert body_fingerprint(weights, ["a", "b"]) == expected  # the order names are given in does not count
    assert body_fingerprint({**weights, "c": torch.zeros(3)}, ["a", "b"]) == expected  # nor unnamed tensors
    as_parameter = {**weights, "b": torch.nn.Parameter(weights["b"].t().contiguous().t())}  # grad, not contiguous
    assert body_fingerprint(as_parameter, ["a", "b"]) == expected
    others = [{**weights, "b": weights["b"].reshape(3, 2)},  # the same bytes, another shape
              {**weights, "a": torch.tensor([1, 2], dtype=torch.uint16) if hasattr(torch, "uint16")
               else torch.tensor([1, 2], dtype=torch.int16).view(torch.float16)},  # another dtype
              {**weights, "b": weights["b"] + 1}]
    assert len({body_fingerprint(w, ["a", "b"]) for w in others} | {expected}) == 4
    assert body_fingerprint({"x": weights["a"], "b": weights["b"]}, ["x", "b"]) != expected  # another name


def test_top_k_mask_keeps_1_to_all_entries_and_refuses_0_or_more():
    scores = {"a": torch.tensor([0.3, 0.9]), "b": torch.tensor([[0.1, 0.5]]), "c": torch.tensor([0.7, 0.2])}
    assert {n: m.tolist() for n, m in top_k_mask(scores, 1).items()} == {
        "a": [False, True], "b": [[False, False]], "c": [False, False]}
    assert {n: m.tolist() for n, m in top_k_mask(scores, 3).items()} == {
        "a": [False, True], "b": [[False, True]], "c": [True, False]}  # three tensors: each its own slice
    assert all(m.all() for m in top_k_mask(scores, 6).values())
    for k in (0, 7):
        with pytest.raises(ValueError, match=rf"^k = {k} outside 1\.\.6$"):
            top_k_mask(scores, k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_top_k_mask_of_diverged_weights_says_to_lower_the_learning_rate(bad):
    with pytest.raises(UserError) as raised:
        top_k_mask({"a": torch.tensor([0.1, bad, 0.3], requires_grad=True)}, 1)
    assert str(raised.value) == ("training diverged (weights are NaN or infinite) before the mask could be chosen; "
                                 "lower --lr")


def _ticket(k: int = 2):
    torch.manual_seed(0)
    model = _Classifier()
    return model, LotteryTicket(model, parameter_groups(model, set()), k)


def test_ticket_keeps_a_cpu_copy_of_theta0_of_the_head_and_selectable_only():
    model, ticket = _ticket()
    assert ticket.trained == ["head.weight", "head.bias", "body.embeddings.weight", "body.dense.weight",
                              "body.dense.bias"]
    assert list(ticket.theta0) == ticket.trained and ticket.k == 2 and ticket.mask is None
    before = model.body.dense.weight.detach().clone()
    with torch.no_grad():
        model.body.dense.weight.add_(1.0)
    assert torch.equal(ticket.theta0["body.dense.weight"], before)  # a copy, not a view
    assert all(t.device.type == "cpu" and not t.requires_grad for t in ticket.theta0.values())


def test_ticket_chooses_the_entries_that_moved_most_and_masks_the_other_gradients_to_exact_zero():
    model, ticket = _ticket(k=2)
    with torch.no_grad():
        model.body.dense.weight[1, 0] += 0.5
        model.body.embeddings.weight[3, 1] -= 0.7
        model.body.dense.bias[0] += 0.1
        model.head.weight.add_(5.0)  # the head moves more, but is not selectable
    ticket.choose()
    assert {n: torch.nonzero(m).tolist() for n, m in ticket.mask.items()} == {
        "body.embeddings.weight": [[3, 1]], "body.dense.weight": [[1, 0]], "body.dense.bias": []}
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    model.body.dense.bias.grad = None
    ticket.mask_gradients()
    assert torch.isnan(model.body.dense.weight.grad[1, 0]) and model.body.dense.weight.grad.nan_to_num().sum() == 0
    assert int(torch.isnan(model.body.embeddings.weight.grad).sum()) == 1
    assert model.body.dense.bias.grad is None and torch.isnan(model.head.weight.grad).all()  # the head is dense
    ticket.reset()
    assert all(torch.equal(dict(model.named_parameters())[n].detach(), ticket.theta0[n]) for n in ticket.trained)


def test_a_ticket_on_some_embedding_rows_chooses_masks_and_resets_as_on_all_of_them():
    """--reduce-vocab: the embedding holds rows 1 and 3 of 4. The rows it lacks count as unmoved,
    so K = 6 of 2 moved entries (the rest ties at 0, taken in order, unheld rows among them) gives
    full training's mask; the held rows' gradients get its rows; reset restores theta0's rows."""
    from polyglot_distil.models.used_vocab import UsedRowsEmbedding

    (full, full_ticket), (reduced, ticket) = _ticket(k=6), _ticket(k=6)
    rows = torch.tensor([1, 3])
    reduced.body.embeddings = UsedRowsEmbedding(reduced.body.embeddings, rows.numpy())
    ticket.train_rows("body.embeddings.weight", rows)
    with torch.no_grad():
        for model, row in ((full, 3), (reduced, 1)):  # full row 3 is the reduced table's row 1
            model.body.embeddings.weight[row, 1] -= 0.7
            model.body.dense.weight[1, 0] += 0.5
    full_ticket.choose()
    ticket.choose()
    assert ticket.mask.keys() == full_ticket.mask.keys()
    assert all(torch.equal(ticket.mask[n], full_ticket.mask[n]) for n in ticket.mask)
    assert bool(full_ticket.mask["body.embeddings.weight"][0].any())  # the ties at 0 reach unheld row 0
    reduced.body.embeddings.weight.grad = torch.ones(2, 2)
    ticket.mask_gradients()
    assert torch.equal(reduced.body.embeddings.weight.grad, full_ticket.mask["body.embeddings.weight"][rows].float())
    ticket.reset()
    assert torch.equal(reduced.body.embeddings.weight.detach(), ticket.theta0["body.embeddings.weight"][rows])


def test_ticket_state_holds_theta0_and_once_chosen_the_mask_and_loads_back():
    model, ticket = _ticket()
    assert sorted(ticket.state()) == sorted(f"theta0.{n}" for n in ticket.trained)
    restored_model, restored = _ticket()
    state = {k: v + 1 for k, v in ticket.state().items()}
    restored.load_state(state)
    assert all(torch.equal(restored.theta0[n], state[f"theta0.{n}"]) for n in ticket.trained)
    assert restored.mask is None  # no mask saved: none loaded
    with torch.no_grad():
        model.body.dense.weight.add_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        model.body.dense.bias.add_(torch.tensor([0.0, 2.0]))
    ticket.choose()
    state = ticket.state()
    assert sorted(state) == sorted([f"theta0.{n}" for n in ticket.trained]
                                   + [f"mask.{n}" for n in ticket.groups.selectable])
    restored.load_state(state)
    assert all(torch.equal(restored.mask[n], ticket.mask[n]) for n in ticket.groups.selectable)
    assert restored.mask["body.dense.bias"].tolist() == [False, True]


def test_a_ticket_with_one_selectable_parameter_saves_and_loads_its_mask():
    model = _Classifier(embeddings=False)
    groups = parameter_groups(model, {"body.dense.bias"})
    assert groups.selectable == ["body.dense.weight"]
    ticket = LotteryTicket(model, groups, 1)
    with torch.no_grad():
        model.body.dense.weight[0, 1] += 1.0
    ticket.choose()
    restored = LotteryTicket(_Classifier(embeddings=False), groups, 1)
    restored.load_state(ticket.state())
    assert restored.mask["body.dense.weight"].tolist() == [[False, True], [False, False]]


def _trained_ticket(tmp_path):
    """A hand-made classifier whose two selectable entries moved most (the mask), its head moved
    too; its ticket and a config file."""
    model, ticket = _ticket(k=2)
    with torch.no_grad():
        model.body.dense.weight[1, 0] += 0.5  # flat index 2
        model.body.embeddings.weight[3, 1] -= 0.7  # flat index 7
        model.head.bias.add_(1.0)
    ticket.choose()
    (tmp_path / "config.json").write_text('{"model_type": "hand-made"}\n')
    return model, ticket


def test_write_diff_holds_the_chosen_indices_trained_values_whole_head_and_the_record(tmp_path):
    from safetensors import safe_open

    model, ticket = _trained_ticket(tmp_path)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path / "diff"
    folder.mkdir()
    record = write_diff(folder, weights, ticket, tmp_path / "config.json",
                        {"base": "the-student", "base_fingerprint": "f00", "density": 0.5})
    assert record == {
        "format": "polyglot-distil sparse diff 1", "base": "the-student", "base_fingerprint": "f00", "density": 0.5,
        "k": 2, "selectable": 8 + 4 + 2, "head": ["head.weight", "head.bias"],
        "frozen": ["body.norm.weight", "body.norm.bias", "body.final_layer_norm.weight"],
        "body": ["body.embeddings.weight", "body.dense.weight"],  # dense.bias has no chosen entry
        "values": "trained values at the flat indices (not differences)"}
    assert (folder / "sparse_diff.json").read_text(encoding="utf-8") == json.dumps(record, indent=2) + "\n"
    assert (folder / "config.json").read_text() == '{"model_type": "hand-made"}\n'
    with safe_open(str(folder / "diff.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert sorted(tensors) == sorted(["body.body.embeddings.weight.indices", "body.body.embeddings.weight.values",
                                      "body.body.dense.weight.indices", "body.body.dense.weight.values",
                                      "head.head.weight", "head.head.bias"])
    assert tensors["body.body.dense.weight.indices"].dtype == torch.int32
    assert tensors["body.body.dense.weight.indices"].tolist() == [2]
    assert tensors["body.body.embeddings.weight.indices"].tolist() == [7]
    assert torch.equal(tensors["body.body.dense.weight.values"], weights["body.dense.weight"].reshape(-1)[[2]])
    assert torch.equal(tensors["body.body.embeddings.weight.values"], weights["body.embeddings.weight"][3, [1]])
    assert torch.equal(tensors["head.head.bias"], weights["head.bias"])
    assert torch.equal(tensors["head.head.weight"], weights["head.weight"])


def test_write_diff_accepts_weights_saved_in_a_lower_precision_and_names_a_moved_entry(tmp_path):
    model, ticket = _trained_ticket(tmp_path)
    halves = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}  # --save-dtype bfloat16
    record = write_diff(tmp_path, halves, ticket, tmp_path / "config.json", {})
    assert record["k"] == 2
    halves["body.dense.bias"][1] += 1.0
    with pytest.raises(RuntimeError) as raised:
        write_diff(tmp_path, halves, ticket, tmp_path / "config.json", {})
    assert str(raised.value) == "body.dense.bias: entries outside the mask moved from theta0 during sparse training"


def test_apply_diff_model_card_says_what_was_applied_to_what():
    from polyglot_distil.distill.diff import model_card

    card = model_card("out/phase1/final", "out/task/sparse_diff", {"k": 12345, "head": ["a", "b"], "density": 0.05})
    assert card == "\n".join([
        "# Task model rebuilt from a sparse diff", "",
        "Written by `polyglot-distil apply-diff`: the phase-1 student",
        "`out/phase1/final` with the sparse difference `out/task/sparse_diff` of a `distil task` (lottery-ticket "
        "sparse", "fine-tuning) written in. It equals that run's `best/` model bit for bit.", "",
        "- body entries trained: 12,345 (density 0.05)", "- head tensors: 2", "",
        "Load it with `AutoModelForSequenceClassification.from_pretrained(folder)` and",
        "`AutoTokenizer.from_pretrained(folder)`.", ""])
    assert "- body entries trained: 12,345\n" in model_card("base", "diff", {"k": 12345, "head": []})


def test_write_diff_stores_the_indices_of_a_tensor_of_64_entries_as_int32(tmp_path):
    model = _Classifier()
    model.body.dense = torch.nn.Linear(2, 32)  # 64 weight entries
    ticket = LotteryTicket(model, parameter_groups(model, set()), 1)
    with torch.no_grad():
        model.body.dense.weight[31, 1] += 1.0  # flat index 63
    ticket.choose()
    (tmp_path / "config.json").write_text("{}")
    write_diff(tmp_path, model.state_dict(), ticket, tmp_path / "config.json", {})
    from safetensors.torch import load_file

    indices = load_file(tmp_path / "diff.safetensors")["body.body.dense.weight.indices"]
    assert indices.dtype == torch.int32 and indices.tolist() == [63]
