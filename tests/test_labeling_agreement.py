"""Agreement statistics against values computed by hand."""

import pytest

from reward.labeling.agreement import (
    cohen_kappa,
    krippendorff_alpha_nominal,
    majority,
    majority_agreement,
    pairwise_kappas,
)


def test_cohen_kappa_matches_hand_computed_value():
    x = ["a", "a", "b", "b", "tie", "a"]
    y = ["a", "b", "b", "b", "tie", "tie"]
    # p_o = 4/6; x has a3 b2 tie1, y has a1 b3 tie2, so p_e = (3*1 + 2*3 + 1*2) / 36 = 11/36
    # kappa = (24/36 - 11/36) / (25/36) = 13/25
    assert cohen_kappa(x, y) == pytest.approx(13 / 25)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # one category only: chance agreement is 1
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_krippendorff_alpha_matches_hand_computed_value():
    units = [["a", "a", "a"], ["a", "b"], ["b", "b", "tie"], ["tie"]]
    # The last unit has one value and is not pairable. Disagreeing ordered pairs, each weighted 1/(m-1):
    # unit 2: 2/1, unit 3: 4/2, so sum o_ck (c != k) = 4. Margins: a 4, b 3, tie 1; n = 8.
    # sum n_c n_k (c != k) = 64 - (16 + 9 + 1) = 38.  alpha = 1 - 7 * 4 / 38 = 5/19
    assert krippendorff_alpha_nominal(units) == pytest.approx(5 / 19)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # no variation at all
    assert krippendorff_alpha_nominal([["a"], []]) is None


def test_majority_needs_a_strict_winner():
    assert majority(["a", "a", "b"]) == "a"
    assert majority(["a", "b"]) is None
    assert majority([]) is None


def test_majority_agreement_leaves_the_annotator_out():
    units = {
        "p1": {"x": "a", "y": "a", "z": "a"},
        "p2": {"x": "a", "y": "b", "z": "b"},  # y and z see a 1-1 split among the others: not counted
        "p3": {"x": "tie", "y": "tie"},
    }
    assert majority_agreement(units) == {
        "x": (pytest.approx(2 / 3), 3),
        "y": (1.0, 2),
        "z": (1.0, 1),
    }


def test_pairwise_kappas_use_only_shared_items():
    units = {
        "p1": {"x": "a", "y": "a"},
        "p2": {"x": "b", "y": "b", "z": "b"},
        "p3": {"x": "a", "z": "b"},
    }
    kappas = pairwise_kappas(units)
    assert kappas[("x", "y")] == (pytest.approx(1.0), 2)
    assert kappas[("y", "z")] == (None, 1)
    assert kappas[("x", "z")] == (pytest.approx(0.0), 2)  # p_o = 1/2, p_e = (1*2)/4
