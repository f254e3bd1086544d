"""eval.metrics against hand computations: softmax, Jensen-Shannon divergence, probability and
label loyalty, accuracy, the confusion matrix (test_evaluate.py checks a whole evaluation's report)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polyglot_distil.eval import metrics


def test_softmax_normalises_the_exponentials_of_each_row():
    logits = np.log([[1.0, 2.0, 5.0], [4.0, 1.0, 3.0]]).astype(np.float32)
    probabilities = metrics.softmax(logits)
    assert probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, [[1 / 8, 2 / 8, 5 / 8], [4 / 8, 1 / 8, 3 / 8]], rtol=1e-6)


def test_softmax_of_large_logits_is_finite_and_exact():
    np.testing.assert_allclose(metrics.softmax([[1000.0, 1000.0 + math.log(3.0)]]), [[0.25, 0.75]], rtol=1e-12)


def test_softmax_stabilises_each_row_by_its_own_maximum():
    # one maximum for the whole array would underflow the small row to 0 / 0
    np.testing.assert_allclose(metrics.softmax([[0.0, math.log(3.0)], [2000.0, 2000.0]]), [[0.25, 0.75], [0.5, 0.5]])


def test_js_divergence_is_zero_for_equal_rows_and_ln2_for_disjoint_ones():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])
    q = np.array([[0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    np.testing.assert_allclose(metrics.js_divergence(p, q), [math.log(2), 0.0, 0.0], atol=1e-15)


def test_js_divergence_of_overlapping_rows_is_the_mean_kl_to_their_midpoint():
    p, q = [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]
    m = [0.25, 0.375, 0.375]
    kl_p = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.375)
    kl_q = 0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.375)
    assert m == [(a + b) / 2 for a, b in zip(p, q)]
    np.testing.assert_allclose(metrics.js_divergence([p, q], [q, p]), [(kl_p + kl_q) / 2] * 2, rtol=1e-12)


def test_js_divergence_of_float32_rows_is_computed_in_float64():
    p = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    q = np.array([[0.3, 0.3, 0.4]], dtype=np.float32)
    p64, q64 = p.astype(np.float64)[0], q.astype(np.float64)[0]
    m = (p64 + q64) / 2
    expected = (np.sum(p64 * np.log(p64 / m)) + np.sum(q64 * np.log(q64 / m))) / 2
    divergence = metrics.js_divergence(p, q)
    assert divergence.dtype == np.float64
    np.testing.assert_allclose(divergence, [expected], rtol=1e-12)


def test_js_divergence_stays_within_0_and_ln2_where_rounding_would_leave_them():
    # rounding makes the sum -1.9e-16 for these nearly equal rows, and ln 2 + 1.1e-16 for the disjoint ones
    p = np.array([[0.5090829770503703, 0.31986025275538676, 0.17105677019424292], [0.1, 0.9, 0.0]])
    q = np.array([[0.5090829773648082, 0.319860253388679, 0.17105676924651278], [0.0, 0.0, 1.0]])
    divergence = metrics.js_divergence(p, q)
    assert divergence[0] == 0.0 and divergence[1] == math.log(2)
    assert 0 < metrics.probability_loyalty(p, q) <= 1


def test_probability_loyalty_is_the_mean_of_one_minus_the_root_of_js():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert metrics.probability_loyalty(p, q) == pytest.approx(((1 - math.sqrt(math.log(2))) + 1.0) / 2, abs=1e-12)
    assert metrics.probability_loyalty(p, p) == pytest.approx(1.0, abs=1e-12)


def test_label_loyalty_and_accuracy_are_the_shares_of_agreeing_labels():
    assert metrics.label_loyalty(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 0])) == 0.75
    assert metrics.accuracy(np.array([0, 1, 2]), np.array([0, 2, 2])) == pytest.approx(2 / 3)


def test_confusion_matrix_counts_gold_rows_against_predicted_columns():
    gold = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    assert metrics.confusion_matrix(gold, predicted).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics.confusion_matrix(np.array([1]), np.array([0]), k=2).tolist() == [[0, 0], [1, 0]]
    assert metrics.confusion_matrix(np.array([0]), np.array([0])).shape == (3, 3)  # unseen classes: zero rows
