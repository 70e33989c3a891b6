"""The MoTE part: which experts to change (ExpertSet, Intervention), how (routing), and what was used
(RoutingRecord). Imports no backend and no runner."""

from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention, load_intervention, save_intervention
from harness.mote.random_baseline import random_intervention_like, random_like
from harness.mote.records import RoutingRecord, Span

__all__ = [
    "ExpertSet",
    "Intervention",
    "RoutingRecord",
    "Span",
    "load_intervention",
    "random_intervention_like",
    "random_like",
    "save_intervention",
]
