"""lm-eval models `mote-hf` and `mote-vllm`: any lm-eval task under a MoTE intervention.

lm-eval (0.4.x) has no entry-point group for models, so importing this package registers them in
lm-eval's model registry (lazily: the classes load when lm-eval asks for them). From Python:

    import harness.lmeval  # registers mote-hf, mote-vllm
    lm_eval.simple_evaluate(model="mote-hf", model_args={"pretrained": "organism",
                            "intervention": "experts.yaml"}, tasks=[...], task_manager=...)

From the shell, `python -m harness.lmeval` is lm-eval's own CLI with the models registered:

    python -m harness.lmeval run --model mote-hf \\
        --model_args pretrained=organism,intervention=results/RUN/experts.yaml \\
        --include_path tasks/lm_eval --tasks mote_sensitive --apply_chat_template
"""

from __future__ import annotations

import contextlib

MODELS = {
    "mote-hf": "harness.lmeval.models:MoteHFLM",
    "mote-vllm": "harness.lmeval.models:MoteVLLM",
}


def register() -> None:
    """Add our models to lm-eval's registry (idempotent); lm-eval's own models stay available."""
    import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's models first)
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


with contextlib.suppress(ImportError):  # lm-eval not installed: harness.lmeval.models says what to install
    register()
