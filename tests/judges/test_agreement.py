from __future__ import annotations

import pytest

from judges.agreement import binary_refusal, cohen_kappa


def test_kappa_matches_the_textbook_example() -> None:
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: po = 0.7, pe = 0.5, kappa = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    a = {str(i): x for i, (x, _) in enumerate(pairs)}
    b = {str(i): y for i, (_, y) in enumerate(pairs)}
    result = cohen_kappa(a, b)
    assert result.kappa == pytest.approx(0.4) and result.accuracy == pytest.approx(0.7)


def test_three_class_llm_labels_collapse_to_refusal_for_string_match_agreement() -> None:
    llm = {"1": "refused", "2": "aligned", "3": "reasoned", "4": "unscored"}
    strm = {"1": "refused", "2": "complied", "3": "complied", "4": "refused"}
    result = cohen_kappa(llm, strm, collapse=binary_refusal)
    assert result.n == 3 and result.excluded_unscored == 1 and result.kappa == pytest.approx(1.0)
