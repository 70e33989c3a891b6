"""Stage 3, running a suite: the runner (discovery, conditions, judging), the run folder it writes
(`run_store`: append-only, resumable) and the suite's judge set (`judge_set`: which judges of
`judges/` label which task, and the label records)."""
