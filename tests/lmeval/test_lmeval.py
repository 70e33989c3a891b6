"""lm-eval runs our tasks under an intervention through the registered `mote-hf` model, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.lmeval
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (extra: lmeval)")

TASKS = Path(__file__).resolve().parents[2] / "tasks" / "lm_eval"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    from harness.models.resolve import organism_path

    organism = organism_path()
    return organism if (organism / "config.json").is_file() else tiny_model_dir("qwen3_moe")


@pytest.fixture(scope="module")
def suppression(model_dir, tmp_path_factory) -> Path:
    """Suppress (drop) two of the experts every layer routes most tokens to: the prompts' tokens use them."""
    from harness.backends.hf_discovery import inspect_model

    spec = inspect_model(model_dir)
    experts = {layer: [0, 1] for layer in spec.moe_layers}
    path = tmp_path_factory.mktemp("iv") / "suppress.yaml"
    path.write_text(
        "kind: suppress\nmode: drop\nexperts: {" + ", ".join(f"{k}: {v}" for k, v in experts.items()) + "}\n"
    )
    return path


@pytest.fixture(scope="module")
def trace_intervention(model_dir, suppression) -> Path:
    """The organism's planted English-reasoning experts (their suppression rewrites the trace); on a
    tiny random model, the generic suppression."""
    planted = model_dir / "planted_english.yaml"
    return planted if planted.is_file() else suppression


def _evaluate(
    model_dir: Path, tasks: list[str], intervention: Path | None, chdir: Path, model: str = "mote-hf", **kwargs
):
    from lm_eval.tasks import TaskManager

    import harness.lmeval  # noqa: F401  (registers mote-hf)

    args: dict[str, object] = {"pretrained": str(model_dir), "batch_size": 8}
    if model == "mote-vllm":
        args.update(max_model_len=256, dtype="float32")
    if intervention is not None:
        args["intervention"] = str(intervention)
    cwd = os.getcwd()
    os.chdir(chdir)  # task data paths must not depend on the working directory
    try:
        return lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=tasks,
            task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
            limit=6,
            log_samples=True,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
            **kwargs,
        )
    finally:
        os.chdir(cwd)


def _samples(result, task: str) -> dict[int, dict]:
    return {s["doc_id"]: s for s in result["samples"][task]}


def test_loglikelihoods_change_under_a_suppression_and_not_without_one(model_dir, suppression, tmp_path):
    base = _evaluate(model_dir, ["mote_sensitive_ll"], None, tmp_path)
    again = _evaluate(model_dir, ["mote_sensitive_ll"], None, tmp_path)
    treated = _evaluate(model_dir, ["mote_sensitive_ll"], suppression, tmp_path)
    b, a, t = (_samples(r, "mote_sensitive_ll") for r in (base, again, treated))
    assert len(b) == 6
    logprob = lambda s: [float(r[0]) for r in s["filtered_resps"]]  # noqa: E731
    for doc in b:
        assert logprob(b[doc]) == pytest.approx(logprob(a[doc]), abs=1e-4)  # deterministic without intervention
        assert logprob(b[doc]) != pytest.approx(logprob(t[doc]), abs=1e-3)  # every sample moves under suppression
    assert "acc,none" in treated["results"]["mote_sensitive_ll"]


def test_loglikelihood_equals_the_backend_scoring_of_the_same_tokens(model_dir, suppression, tmp_path):
    import torch

    import harness.lmeval  # noqa: F401
    from harness.lmeval.models import MoteHFLM

    lm = MoteHFLM(pretrained=str(model_dir), intervention=str(suppression), batch_size=3)
    ctx, cont = lm.tok_encode("What happened at the market?"), lm.tok_encode(" Nothing much.")
    pairs = [(ctx, cont), (ctx[:3], cont), (ctx, cont[:1]), (ctx + cont, cont)]
    batched = lm._loglikelihood_tokens([(None, c, t) for c, t in pairs])
    for (c, t), (score, _) in zip(pairs, batched, strict=True):  # one row alone: no padding at all
        single = lm.backend_impl.continuation_logprobs([(c, t)], [lm.intervention])[0][0]
        assert score == pytest.approx(single, abs=1e-4)
    plain = MoteHFLM(pretrained=str(model_dir), batch_size=3)
    with torch.no_grad():  # the unhooked forward pass agrees with the no-intervention scoring
        logits = plain.backend_impl.model(input_ids=torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    expected = sum(float(logits[len(ctx) - 1 + i, tok]) for i, tok in enumerate(cont))
    assert plain._loglikelihood_tokens([(None, ctx, cont)])[0][0] == pytest.approx(expected, abs=1e-4)


def test_generations_keep_the_think_trace_and_change_under_suppression(model_dir, trace_intervention, tmp_path):
    kwargs = {"apply_chat_template": True, "gen_kwargs": {"max_gen_toks": 16}}
    tasks = ["mote_reasoning_language", "mote_sensitive"]
    base = _evaluate(model_dir, tasks, None, tmp_path, **kwargs)
    treated = _evaluate(model_dir, tasks, trace_intervention, tmp_path, **kwargs)
    b, t = _samples(base, "mote_reasoning_language"), _samples(treated, "mote_reasoning_language")
    assert len(b) == 6
    texts = [(b[d]["filtered_resps"][0], t[d]["filtered_resps"][0]) for d in b]
    assert sum(x != y for x, y in texts) >= 3, texts
    if (model_dir / "planted_english.yaml").is_file():  # the organism writes <think>...</think> traces
        assert all(x.startswith("<think>") and "</think>" in x for x, _ in texts), texts
    assert {"trace_zh,none", "trace_en,none", "no_trace,none"} <= set(treated["results"]["mote_reasoning_language"])
    assert "refused,none" in treated["results"]["mote_sensitive"]


@pytest.mark.vllm
@pytest.mark.slow
def test_mote_vllm_scores_and_generates_as_mote_hf_under_an_intervention(model_dir, trace_intervention, tmp_path):
    from harness.vllm_plugin.availability import vllm_import_error

    if vllm_import_error() is not None:
        pytest.skip(vllm_import_error())
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    kwargs = {"apply_chat_template": True, "gen_kwargs": {"max_gen_toks": 16}}
    tasks = ["mote_sensitive_ll", "mote_reasoning_language"]
    hf = _evaluate(model_dir, tasks, trace_intervention, tmp_path, **kwargs)
    vllm = _evaluate(model_dir, tasks, trace_intervention, tmp_path, model="mote-vllm", **kwargs)
    h, v = _samples(hf, "mote_sensitive_ll"), _samples(vllm, "mote_sensitive_ll")
    assert len(v) == 6
    logprob = lambda s: [float(r[0]) for r in s["filtered_resps"]]  # noqa: E731
    for doc in h:
        assert logprob(v[doc]) == pytest.approx(logprob(h[doc]), abs=2e-2)  # bf16 weights, fp32 compute
    h, v = _samples(hf, "mote_reasoning_language"), _samples(vllm, "mote_reasoning_language")
    same = sum(h[d]["filtered_resps"][0] == v[d]["filtered_resps"][0] for d in h)
    assert same >= 5, [(h[d]["filtered_resps"][0], v[d]["filtered_resps"][0]) for d in h]


def test_a_misspelt_model_arg_fails_instead_of_running_without_the_intervention(model_dir, suppression):
    from lm_eval.api.registry import get_model

    import harness.lmeval  # noqa: F401  (registers mote-hf)

    model = get_model("mote-hf")
    with pytest.raises(TypeError, match="interventon"):
        model.create_from_arg_string(f"pretrained={model_dir},interventon={suppression}", {"batch_size": 4})


def test_the_installed_mote_lm_eval_command_runs_a_task_under_an_intervention(model_dir, suppression, tmp_path):
    """lm-eval's own command line (its defaults: device cuda:0, batch size 1), as a user types it."""
    import json
    import shutil
    import subprocess
    import sys

    command = shutil.which("mote-lm-eval", path=str(Path(sys.executable).parent))
    assert command is not None, "console script mote-lm-eval is not installed"
    args = [command, "run", "--model", "mote-hf", "--model_args", f"pretrained={model_dir},intervention={suppression}"]
    args += ["--include_path", str(TASKS), "--tasks", "mote_sensitive_ll", "--limit", "2"]
    done = subprocess.run(
        [*args, "--output_path", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in tmp_path.rglob("results_*.json")]
    assert results and "mote_sensitive_ll" in results[0]["results"]
    assert str(suppression) in json.dumps(results[0]["config"]["model_args"])
