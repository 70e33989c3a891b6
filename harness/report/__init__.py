"""Stage 5, reporting: read stored run folders only, never call a model or recompute a statistic.

- `run_table`: one run's effect table (leaderboard.md) and terminal summary, written by `harness run`;
- `gate`: CI bounds on summary.json metrics (`harness gate`);
- `build`, `tables`, `plots`, `html`, `runs`: the cross-run report (`harness report`): leaderboards
  (md, csv, html, parquet) and plots from summary.json, ftri.json, ftri_maps.npz, routing/, labels.jsonl.

`load_runs(paths)` reads run folders; `write_report(runs, formats, out)` writes the files. The names
below load on first use, so `harness run` and `harness gate` do not import the plotting stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMATS": "build",
    "parse_formats": "build",
    "write_report": "build",
    "RunResults": "runs",
    "find_run_dirs": "runs",
    "load_run": "runs",
    "load_runs": "runs",
    "leaderboard_frame": "tables",
    "summary_frame": "tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"harness.report.{module}"), name)
