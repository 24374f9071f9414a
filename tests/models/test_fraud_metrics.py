import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudlite.models.metrics import average_precision, card_precision_at_k, recall_at_budget, roc_auc


def test_hand_computed_auc_and_ap():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    # ranks: 0.8(+) P=1 R=.5 ; 0.4(-) ; 0.35(+) P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert average_precision(y, s) == pytest.approx(0.5 + 1 / 3)


def test_ties_count_half_in_auc():
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_match_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(2000) < 0.05).astype(int)
    s = np.round(rng.random(2000) + y * 0.3, 2)  # rounding creates ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_single_class_gives_nan():
    assert np.isnan(roc_auc([0, 0], [0.1, 0.2]))
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_card_precision_hand_computed_with_detected_cards_removed():
    # day 0: cards a(fraud, .9), b(legit, .8), c(fraud, .1); k=2 -> top {a, b}: 1/2; a detected.
    # day 1: a(fraud, .95) removed as already detected; b(.2), c(fraud, .7) -> top {c, b}: 1/2.
    day = [0, 0, 0, 1, 1, 1]
    card = ["a", "b", "c", "a", "b", "c"]
    y = [1, 0, 1, 1, 0, 1]
    s = [0.9, 0.8, 0.1, 0.95, 0.2, 0.7]
    assert card_precision_at_k(day, card, y, s, k=2) == pytest.approx(0.5)
    # k=1: day0 top a (1/1), day1 a removed -> c (1/1)
    assert card_precision_at_k(day, card, y, s, k=1) == pytest.approx(1.0)


def test_card_precision_uses_max_score_per_card_and_divides_by_k():
    day = [0, 0, 0]
    card = ["a", "a", "b"]
    y = [0, 1, 0]
    s = [0.1, 0.9, 0.5]
    assert card_precision_at_k(day, card, y, s, k=1) == pytest.approx(1.0)
    assert card_precision_at_k(day, card, y, s, k=4) == pytest.approx(0.25)


def test_recall_at_budget():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0, 0, 0.1, 0, 0, 0, 0, 0])
    assert recall_at_budget(y, s, budget=0.1) == pytest.approx(0.5)
    assert recall_at_budget(y, s, budget=0.2) == pytest.approx(0.5)


def test_choose_thresholds_maximizes_f1_and_alert_is_stricter():
    from fraudlite.models.metrics import choose_thresholds

    y = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.05])
    threshold, alert = choose_thresholds(y, s, alert_precision=0.9)
    # F1 at 0.6: P=3/4 R=1 -> 0.857 (best); alert: precision 1.0 down to 0.8
    assert threshold == pytest.approx(0.6)
    assert alert == pytest.approx(0.8)
