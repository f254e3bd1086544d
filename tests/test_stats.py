"""Error bars of `eval xnli`: the bootstrap interval has the width the normal approximation
predicts, the exact McNemar test equals a hand computation, pairing makes a model's difference
from itself exactly zero, and the report carries intervals and paired tests (none with
--bootstrap 0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polyglot_distil.eval.stats import compare_paired, mcnemar_exact, percentile_interval, resampled_accuracies, \
    verdict


def test_the_bootstrap_interval_of_an_accuracy_has_the_normal_approximations_width():
    """2,490 pairs at 60% (an XNLI dev language): +/-1.96 sqrt(p(1-p)/n) = +/-1.92 points."""
    correct = np.random.default_rng(1).random(2490) < 0.6
    low, high = percentile_interval(resampled_accuracies(correct, 2000, seed=0))
    p = correct.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / len(correct))
    assert low < p < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_the_draw_depends_only_on_the_seed_and_the_number_of_pairs():
    a = np.random.default_rng(2).random(300) < 0.5
    assert np.array_equal(resampled_accuracies(a, 50, seed=3), resampled_accuracies(a, 50, seed=3))
    assert not np.array_equal(resampled_accuracies(a, 50, seed=3), resampled_accuracies(a, 50, seed=4))


def test_mcnemar_exact_equals_a_hand_computation():
    # 10 pairs only a gets right, 2 only b: p = 2 (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096
    a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 5)
    result = mcnemar_exact(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 2)
    assert result["p_value"] == pytest.approx(158 / 4096, rel=1e-12)
    assert mcnemar_exact(b, a)["p_value"] == result["p_value"]
    assert mcnemar_exact(a, a) == {"only_a": 0, "only_b": 0, "p_value": 1.0}
    assert mcnemar_exact(np.array([True, False]), np.array([False, True]))["p_value"] == 1.0


def test_a_paired_comparison_sees_what_two_unpaired_intervals_miss():
    """b is a, wrong on 40 more of 2,490 pairs: 1.6 points, inside each one's +/-1.9-point
    interval, yet the paired test and interval call it real."""
    a = np.random.default_rng(5).random(2490) < 0.6
    b = a.copy()
    b[np.flatnonzero(a)[:40]] = False
    comparison = compare_paired(a, b, 1000, seed=0)
    assert comparison["difference"] == pytest.approx(40 / 2490)
    assert comparison["interval"][0] > 0 and comparison["p_value"] < 1e-6
    assert verdict(comparison) == "ahead" and verdict(compare_paired(b, a, 100, seed=0)) == "behind"
    same = compare_paired(a, a, 200, seed=0)
    assert same["interval"] == [0.0, 0.0] and verdict(same) == "no significant difference"
