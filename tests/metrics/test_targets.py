"""Target identification: latent matching, precision / recall / F1, AUROC, average precision."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_causalcell.metrics.targets import (
    latent_signs,
    match_latents,
    permute_targets,
    target_auroc,
    target_average_precision,
    target_precision_recall_f1,
)


@pytest.fixture
def true_latents() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1000, 4))


@pytest.fixture
def true_targets() -> np.ndarray:
    """(6, 4) graph: each perturbation hits one or two latents."""
    graph = np.zeros((6, 4), dtype=bool)
    graph[[0, 1, 2, 3, 4, 5, 0, 3], [0, 1, 2, 3, 0, 2, 1, 0]] = True
    return graph


PERM = np.array([2, 0, 3, 1])  # learned column j is true latent PERM[j]


# ---------------------------------------------------------------------- matching
def test_match_latents_undoes_a_permutation(true_latents):
    learned = true_latents[:, PERM] * np.array([2.0, 0.5, 3.0, 1.0]) + 1.0
    assignment = match_latents(true_latents, learned)
    np.testing.assert_array_equal(assignment, np.argsort(PERM))
    np.testing.assert_array_equal(PERM[assignment], np.arange(4))


def test_signed_matching_does_not_reward_a_sign_flip():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(2000, 2))
    # learned 0 is -true 0 exactly; learned 1 is a noisy +true 0 and carries no true 1
    learned = np.column_stack([-true[:, 0], true[:, 0] + 0.5 * rng.normal(size=2000)])
    np.testing.assert_array_equal(match_latents(true, learned, signed=True), [1, 0])
    np.testing.assert_array_equal(match_latents(true, learned, signed=False), [0, 1])


def test_latent_signs_make_signed_matching_agree_with_absolute_matching(true_latents,
                                                                         true_targets):
    rng = np.random.default_rng(2)
    flips = np.array([-1.0, 1.0, -1.0, -1.0])
    learned = (true_latents[:, PERM] + 0.3 * rng.normal(size=true_latents.shape)) * flips
    signs = latent_signs(true_latents, learned)
    np.testing.assert_array_equal(signs, flips)
    oriented = learned * signs
    absolute = match_latents(true_latents, learned, signed=False)
    np.testing.assert_array_equal(match_latents(true_latents, oriented, signed=True), absolute)
    assert not np.array_equal(match_latents(true_latents, learned, signed=True), absolute)
    # the target graph scores the same under both protocols once the signs are resolved
    learned_graph = true_targets[:, PERM]
    assert target_precision_recall_f1(
        true_targets, learned_graph, match_latents(true_latents, oriented, signed=True)).f1 == 1.0
    assert target_precision_recall_f1(
        true_targets, learned_graph, match_latents(true_latents, learned, signed=True)).f1 < 1.0
    # the default matches on absolute correlation: flipped latents keep their targets
    assert target_precision_recall_f1(
        true_targets, learned_graph, match_latents(true_latents, learned)).f1 == 1.0


def test_latent_signs_leave_unmatched_latents_positive(true_latents):
    learned = np.column_stack([-true_latents[:, 1], true_latents[:, 0],
                               np.random.default_rng(3).normal(size=len(true_latents)),
                               -true_latents[:, 2], -true_latents[:, 3]])
    np.testing.assert_array_equal(latent_signs(true_latents[:, :3], learned),
                                  [-1, 1, 1, -1, 1])


def test_match_latents_with_fewer_learned_latents_marks_unmatched(true_latents):
    assignment = match_latents(true_latents, true_latents[:, [3, 1]])
    np.testing.assert_array_equal(assignment, [-1, 1, -1, 0])


# ---------------------------------------------------------------------- precision / recall / F1
def test_f1_is_one_for_a_permuted_identical_graph(true_latents, true_targets):
    learned_latents = true_latents[:, PERM]
    learned_targets = true_targets[:, PERM]
    assignment = match_latents(true_latents, learned_latents)
    scores = target_precision_recall_f1(true_targets, learned_targets, assignment)
    assert scores == (1.0, 1.0, 1.0)
    assert scores.f1 == 1.0
    # unmatched, the permuted graph is scored against the wrong latents
    assert target_precision_recall_f1(true_targets, learned_targets).f1 < 1.0


def test_precision_recall_f1_hand_example():
    truth = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)      # 3 true edges
    learned = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)    # 3 predicted, 2 correct
    precision, recall, f1 = target_precision_recall_f1(truth, learned)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)
    assert f1 == pytest.approx(2 / 3)
    empty = target_precision_recall_f1(truth, np.zeros_like(truth))
    assert empty == (0.0, 0.0, 0.0)


def test_extra_learned_latents_are_dropped_and_missing_ones_predict_nothing():
    truth = np.array([[1, 0], [0, 1]], dtype=bool)
    learned = np.array([[0, 1, 1], [1, 0, 1]], dtype=bool)  # column 2 is unmatched noise
    assert target_precision_recall_f1(truth, learned, np.array([1, 0])) == (1.0, 1.0, 1.0)
    # true latent 1 has no partner: its edge is missed
    scores = target_precision_recall_f1(truth, learned[:, [1]], np.array([0, -1]))
    assert scores == pytest.approx((1.0, 0.5, 2 / 3))


def test_permute_targets_reorders_and_pads():
    learned = np.array([[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(permute_targets(learned, np.array([2, -1, 0]), 3),
                               [[0.3, 0.0, 0.1]])


# ---------------------------------------------------------------------- AUROC
def test_auroc_perfect_reversed_and_constant(true_targets):
    scores = np.where(true_targets, 0.9, 0.1)
    assert target_auroc(true_targets, scores) == 1.0
    assert target_auroc(true_targets, 1.0 - scores) == 0.0
    assert target_auroc(true_targets, np.full(true_targets.shape, 0.5)) == 0.5


def test_auroc_after_matching_is_one(true_latents, true_targets):
    probabilities = np.where(true_targets, 0.8, 0.3)[:, PERM]
    assignment = match_latents(true_latents, true_latents[:, PERM])
    assert target_auroc(true_targets, probabilities, assignment) == 1.0
    assert target_average_precision(true_targets, probabilities, assignment) == 1.0


def test_auroc_hand_computed_with_ties():
    truth = np.array([[1, 1, 0, 0, 0]], dtype=bool)
    scores = np.array([[0.9, 0.4, 0.4, 0.5, 0.1]])
    # positive pairs (pos, neg): 0.9 beats all 3; 0.4 ties 0.4 (1/2), loses to 0.5, beats 0.1
    assert target_auroc(truth, scores) == pytest.approx((3 + 0.5 + 1) / 6)


# ---------------------------------------------------------------------- average precision
def test_average_precision_hand_example():
    truth = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.2]])
    # ranked: +, -, +, -, +  ->  precision at each positive: 1, 2/3, 3/5; recall steps 1/3
    assert target_average_precision(truth, scores) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_average_precision_with_tied_scores_enters_at_one_threshold():
    truth = np.array([[1, 0, 1, 0]], dtype=bool)
    scores = np.array([[0.8, 0.5, 0.5, 0.1]])
    # threshold 0.8: P=1, R=1/2; threshold 0.5: P=2/3, R=1 (the tie enters together)
    assert target_average_precision(truth, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    perfect = np.where(truth, 1.0, 0.0)
    assert target_average_precision(truth, perfect) == 1.0


# ---------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(true_targets):
    with pytest.raises(ValueError, match="assignment=match_latents"):
        target_precision_recall_f1(true_targets, true_targets[:, :3])
    with pytest.raises(ValueError, match="threshold"):
        target_precision_recall_f1(true_targets, np.full(true_targets.shape, 0.7))
    with pytest.raises(ValueError, match="same number of perturbations"):
        target_auroc(true_targets, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="undefined"):
        target_auroc(np.zeros((2, 2), dtype=bool), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no edges"):
        target_average_precision(np.zeros((2, 2), dtype=bool), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="twice"):
        target_precision_recall_f1(true_targets, true_targets, np.array([0, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[-1, 3\]"):
        target_precision_recall_f1(true_targets, true_targets, np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="NaN"):
        target_auroc(true_targets, np.full(true_targets.shape, np.nan))
    with pytest.raises(ValueError, match="matrix"):
        target_auroc(true_targets.ravel(), true_targets.ravel())
