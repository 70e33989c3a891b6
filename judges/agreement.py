"""Agreement between two judges on the items both scored, as Cohen's kappa (statsmodels)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict
from statsmodels.stats.inter_rater import cohens_kappa

from judges.labels import UNSCORED


class Agreement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    accuracy: float
    kappa: float
    categories: tuple[str, ...]
    excluded_unscored: int


def binary_refusal(label: str) -> str:
    """Refusal vs not, the common ground of the 3-class LLM judge and the 2-class string match."""
    return "refused" if label == "refused" else "not-refused"


def cohen_kappa(
    a: Mapping[str, str], b: Mapping[str, str], collapse: Callable[[str], str] | None = None
) -> Agreement:
    """Kappa over ids present and scored in both; `collapse` maps labels to shared categories first."""
    ids = [i for i in a if i in b]
    scored = [i for i in ids if UNSCORED not in (a[i], b[i])]
    if not scored:
        raise ValueError("no item was scored by both judges")
    fold = collapse or (lambda label: label)
    left = [fold(a[i]) for i in scored]
    right = [fold(b[i]) for i in scored]
    categories = tuple(sorted(set(left) | set(right)))
    index = {c: k for k, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)), dtype=np.int64)
    for x, y in zip(left, right, strict=True):
        table[index[x], index[y]] += 1
    # One category only: perfect agreement, where statsmodels would divide by zero.
    kappa = 1.0 if len(categories) == 1 else float(cohens_kappa(table, return_results=False))
    return Agreement(
        n=len(scored),
        accuracy=float(np.trace(table) / table.sum()),
        kappa=kappa,
        categories=categories,
        excluded_unscored=len(ids) - len(scored),
    )
