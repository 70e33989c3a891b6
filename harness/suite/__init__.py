"""Stage 1, the suite: the YAML a user writes, validated (`schema`), the task definitions it names
(`task_definitions`: the sensitive grid, reasoning-language prompts, MT-Bench), the prompts each task
yields (`task_prompts`), and `harness generate`'s prompt files (`prompt_files`).

`from harness.suite import Suite, load_suite` is the public path (it was the module `harness/suite.py`).
"""

from harness.suite.schema import Suite, TaskSpec, load_suite

__all__ = ["Suite", "TaskSpec", "load_suite"]
