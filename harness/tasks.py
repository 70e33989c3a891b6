"""Old import path of `harness.suite.task_definitions` (documented as `harness.tasks.load_sensitive`),
kept so users' code keeps working; new code imports `harness.suite.task_definitions`."""

from harness.suite.task_definitions import (
    MTBench,
    ReasoningPrompt,
    SensitivePrompt,
    SensitiveTaskSpec,
    expand_sensitive,
    load_mt_bench,
    load_reasoning_language,
    load_sensitive,
    mt_bench_messages,
)

__all__ = [
    "MTBench",
    "ReasoningPrompt",
    "SensitivePrompt",
    "SensitiveTaskSpec",
    "expand_sensitive",
    "load_mt_bench",
    "load_reasoning_language",
    "load_sensitive",
    "mt_bench_messages",
]
