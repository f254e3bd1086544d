"""Layer-mapping search (`distil search-map`): the search on losses known in advance, and the
command on a tiny teacher: short phase-1 runs ranked by a held-out criterion that does not depend on
the mapping, the best mapping written where `distil general --layer-map` reads it."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from conftest import CORPORA, run_cli
from polyglot_distil.distill.layer_search import search_mappings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LANGS = [arg for lang in ("en", "fr") for arg in ("--lang", f"{lang}={CORPORA / lang / 'sample.txt'}")]
SHORT = ["--block-size", 32, "--heldout-blocks", 4, "--batch-size", 4, "--steps", 2, "--no-progress"]


def _distance_to(target):
    return lambda mapping: sum(abs(a - b) for a, b in zip(mapping, target))


# ---------------------------------------------------------------------------------------------
# The search


def test_a_small_space_is_searched_exhaustively_and_the_lowest_loss_wins():
    losses = {m: random.Random(hash(m)).random() for m in itertools.combinations(range(5), 2)}
    calls = []
    best, history = search_mappings(lambda m: calls.append(m) or losses[m], 5, 2, budget=10)
    assert sorted(calls) == sorted(losses)  # all 10, each once
    assert best == min(losses, key=losses.get)
    assert history == losses


def test_given_candidates_are_tried_once_each_and_the_best_of_them_returned():
    known = {(1, 3, 5): 0.7, (0, 2, 5): 0.2, (3, 4, 5): 0.9}
    calls = []
    best, history = search_mappings(lambda m: calls.append(m) or known[m], 6, 3, budget=1,
                                    candidates=[*known, (1, 3, 5)])
    assert best == (0, 2, 5)
    assert calls == list(known)  # the repeated (1, 3, 5) is not run again; the budget does not cut given ones


def test_the_genetic_search_spends_its_budget_on_distinct_increasing_mappings_and_beats_random_sampling():
    target = (0, 3, 5, 6, 9, 11)
    found = 0
    for seed in range(20):
        best, history = search_mappings(_distance_to(target), 12, 6, budget=40, seed=seed)
        assert len(history) == 40  # of 924
        assert all(list(m) == sorted(set(m)) and len(m) == 6 and m[-1] < 12 for m in history)
        assert best == min(history, key=history.get)
        found += best == target
    sampled = 0
    for seed in range(20):  # 40 distinct random mappings, the same budget
        rng, seen = random.Random(seed), set()
        while len(seen) < 40:
            seen.add(tuple(sorted(rng.sample(range(12), 6))))
        sampled += target in seen
    assert found >= 10 and sampled <= 2, (found, sampled)


def test_the_genetic_search_is_reproducible_from_its_seed():
    score = _distance_to((2, 3, 7))
    assert search_mappings(score, 12, 3, budget=15, seed=4)[1] == search_mappings(score, 12, 3, budget=15, seed=4)[1]


# ---------------------------------------------------------------------------------------------
# The command


@pytest.mark.slow
def test_search_map_ranks_short_runs_and_general_takes_the_mapping_it_wrote(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "search"
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--out", out) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "search.json").read_text())
    tried = {tuple(row["layer_map"]): row["criterion"] for row in summary["tried"]}
    assert sorted(tried) == list(itertools.combinations(range(4), 2))  # 6 <= the default budget: all of them
    assert tuple(summary["best"]) == min(tried, key=tried.get)
    assert (out / "layer_map.txt").read_text().strip() == ",".join(map(str, summary["best"]))
    assert summary["criterion"] == "hidden" and summary["default"]["layer_map"] == [1, 3]
    assert f"best mapping {','.join(map(str, summary['best']))}" in printed
    for mapping in tried:  # each run scored, its models deleted, its metrics kept
        folder = out / "candidates" / "-".join(map(str, mapping))
        assert (folder / "metrics.jsonl").is_file() and not (folder / "final").exists()

    # phase 1 takes the search's folder as --layer-map, and the student starts from those layers
    best = summary["best"]
    student = tmp_path / "student"
    assert run_cli("student", "--teacher", tiny_bert_dir, "--layers", 2, "--init-layers",
                   ",".join(map(str, best)), "--out", student) == 0
    general = tmp_path / "general"
    assert run_cli("distil", "general", "--teacher", tiny_bert_dir, "--student", student, *LANGS, *SHORT,
                   "--layer-map", out, "--out", general) == 0
    info = json.loads((general / "final" / "distillation.json").read_text())
    assert info["layer_map"] == best

    # an existing search is not overwritten; --resume reuses every scored candidate
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--out", out) == 2
    assert "already exists" in capsys.readouterr().err
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("candidates/*/result.json")}
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--out", out, "--resume") == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("candidates/*/result.json")} == stamps
    assert json.loads((out / "search.json").read_text())["best"] == best


@pytest.mark.slow
def test_the_criterion_does_not_depend_on_the_mapping_a_copy_of_the_teacher_scores_zero(tmp_path, tiny_bert_dir):
    # A 4-layer student of the 4-layer teacher, its layers copied: the one increasing mapping is the
    # identity, every loss is 0 and so is every update: the student stays the teacher, criterion 0.
    out = tmp_path / "search"
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--layers", 4, *LANGS, *SHORT,
                   "--out", out) == 0
    summary = json.loads((out / "search.json").read_text())
    assert summary["best"] == [0, 1, 2, 3] and summary["best_value"] == 0.0
    # The same with the student's layers in another order than the teacher's is not a copy: > 0.
    assert run_cli("student", "--teacher", tiny_bert_dir, "--layers", 4, "--init-layers", "1,0,2,3",
                   "--out", tmp_path / "shuffled") == 0
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--student", tmp_path / "shuffled", *LANGS,
                   *SHORT, "--out", tmp_path / "search2") == 0
    assert json.loads((tmp_path / "search2" / "search.json").read_text())["best_value"] > 1e-6


@pytest.mark.parametrize("args, message", [
    (["--candidates", "1,3;0,7"], "--candidates: teacher layer 7 does not exist"),
    (["--candidates", "1,2,3"], "--candidates names 3 teacher layers but the student has 2"),
    (["--budget", "0"], "--budget must be at least 1"),
    (["--heldout-blocks", "0"], "--heldout-blocks must be at least 1"),
    (["--lr", "0"], "--lr must be positive"),
    (["--hidden-size", "16", "--recipe", "minilm", "--criterion", "hidden"], "--criterion hidden compares"),
])
def test_a_bad_search_option_gives_one_line(tmp_path, tiny_bert_dir, capsys, args, message):
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--out", tmp_path / "search", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "search").exists()


def test_a_search_that_fails_before_scoring_a_candidate_leaves_no_output(tmp_path, tiny_bert_dir, capsys):
    # the block size is checked against the loaded models, after the search's folder was made
    assert run_cli("distil", "search-map", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--block-size", 100000, "--out", tmp_path / "search") == 2
    *progress, error = capsys.readouterr().err.strip().splitlines()  # the search's opening line is progress
    assert [line.split(",")[0] for line in progress] == ["search: all 6 increasing mappings"], progress
    assert error.startswith("error: --block-size 100000"), error
    assert not (tmp_path / "search").exists()


@pytest.mark.slow
def test_general_reads_a_layer_map_file_and_refuses_a_folder_without_one(tmp_path, tiny_bert_dir, capsys):
    (tmp_path / "map.txt").write_text("0,3\n")
    assert run_cli("distil", "general", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--layer-map", tmp_path / "map.txt", "--out", tmp_path / "g") == 0
    assert json.loads((tmp_path / "g" / "final" / "distillation.json").read_text())["layer_map"] == [0, 3]
    (tmp_path / "empty").mkdir()
    assert run_cli("distil", "general", "--teacher", tiny_bert_dir, "--layers", 2, *LANGS, *SHORT,
                   "--layer-map", tmp_path / "empty", "--out", tmp_path / "g2") == 2
    assert "has no layer_map.txt" in capsys.readouterr().err
