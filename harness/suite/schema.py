"""Suite files: one YAML that names the model, the tasks, the judges, the fTRI step and the conditions.

Plain data validated by pydantic; errors name the file, the field and what was expected. See
tasks/suites/quickstart.yaml for a commented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from harness.analysis.ftri import Score
from harness.common.errors import InputError
from harness.mote.experts import ExpertSet
from harness.mote.intervention import Mode

TaskType = Literal["refusal", "language", "qa", "mt_bench"]
JudgeName = Literal["refusal-string", "refusal-llm", "reasoning-language", "reference", "mt-bench"]
Span = Literal["prompt", "think", "answer", "generated", "all"]

DEFAULT_JUDGE: dict[str, JudgeName] = {
    "refusal": "refusal-string",
    "language": "reasoning-language",
    "qa": "reference",
    "mt_bench": "mt-bench",
}


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field check's error, carrying the field it is about (a model validator's own errors
    point at the whole model)."""
    return PydanticCustomError("suite_field", "{message}", {"field": field, "message": message})


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationSpec(_Spec):
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(default=16, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"  # auto: see harness/backends/vllm_dtype.py


class TaskSpec(_Spec):
    """A task: prompts from a packaged data set (`source`) or a JSONL file (`path`); for `mt_bench`,
    `path` is a folder in FastChat's layout (question.jsonl, reference_answer/gpt-4.jsonl,
    judge_prompts.jsonl)."""

    name: str
    type: TaskType
    source: str | None = None  # e.g. "organism/refusal", "sensitive", "reasoning_language"
    path: Path | None = None
    judge: JudgeName | None = None
    limit: int | None = Field(default=None, ge=1)  # first N prompts of each split (smoke runs)

    @model_validator(mode="after")
    def _one_source(self) -> TaskSpec:
        if (self.source is None) == (self.path is None):
            raise ValueError("give exactly one of source or path")
        if self.type == "mt_bench" and self.path is None:
            raise ValueError("an mt_bench task needs path: a folder in FastChat's layout")
        return self

    @property
    def judge_name(self) -> JudgeName:
        return self.judge or DEFAULT_JUDGE[self.type]


class EndpointSpec(_Spec):
    """An OpenAI-compatible judge endpoint; the API key is read from the env var *named* here."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(default=8, ge=1)


class ServerSpec(_Spec):
    """Served MoTE-enabled vLLM replicas (`harness serve MODEL --dev-rpc`) for `backend: openai`: one
    `base_url`, or several `base_urls` serving the same model (harness/backends/replicas.py spreads the
    requests over them). `model` is the name the servers serve; the suite's `model` stays the local
    folder with its tokenizer."""

    base_url: str | None = None  # without /v1, e.g. http://127.0.0.1:8000
    base_urls: list[str] | None = None  # replicas of one model: the run spreads its requests over them
    model: str
    api_key_env: str | None = None  # env var *named* here holds the key (none: the server needs none)
    concurrency: int = Field(default=16, ge=1)  # requests in flight per replica
    timeout_s: float = Field(default=600.0, gt=0)  # one request; a replica that does not answer in time is down
    attempts: int = Field(default=3, ge=1)  # tries per request over the replicas before the run stops
    rejoin_s: float = Field(default=10.0, ge=0)  # how often a replica that went down is tried again

    @model_validator(mode="after")
    def _one_list_of_urls(self) -> ServerSpec:
        if (self.base_url is None) == (self.base_urls is None):
            raise ValueError("give base_url (one server) or base_urls (replicas), not both or neither")
        if self.base_urls is not None:
            if not self.base_urls:
                raise ValueError("base_urls: at least one URL")
            norm = [u.rstrip("/") for u in self.base_urls]
            twice = sorted({u for u in norm if norm.count(u) > 1})
            if twice:
                raise ValueError(f"base_urls: {twice[0]} is listed twice")
        return self

    @property
    def urls(self) -> list[str]:
        return [u.rstrip("/") for u in (self.base_urls if self.base_urls is not None else [self.base_url or ""])]


class AssembledModelSpec(_Spec):
    """A child of MoE parents assembled at load from a recipe (harness/assembly), with no copy of its
    weights on disk: `model: {assemble: RECIPE.yaml, set: [routed_experts.r1=0.5]}`."""

    assemble: Path
    set: list[str] = Field(default_factory=list)  # GROUP.PARENT=LAMBDA overrides, as `harness assemble --set`

    @property
    def name(self) -> str:
        return " ".join([f"assembled {self.assemble.stem}", *self.set])


class AssemblySweepSpec(_Spec):
    """A model sweep over a recipe's children: the named parent's lambda on these groups (the base's the
    rest), one child per lambda; each child is a condition on the same tasks and prompts."""

    recipe: Path
    parent: str
    groups: list[str] = Field(min_length=1)
    lambdas: list[float] = Field(min_length=1)
    parents: bool = True  # also evaluate the two parents as they are (token ratios, the endpoints' match)

    @field_validator("lambdas")
    @classmethod
    def _in_range(cls, lambdas: list[float]) -> list[float]:
        bad = [x for x in lambdas if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"lambdas in [0, 1] (got {bad})")
        if len(set(lambdas)) != len(lambdas):
            raise ValueError(f"distinct lambdas (got {lambdas})")
        return sorted(lambdas)

    def overrides(self, lam: float) -> list[str]:
        """`harness assemble --set` overrides of one child."""
        return [f"{group}.{self.parent}={lam:g}" for group in self.groups]


class SweepModelSpec(_Spec):
    """One model of a `models:` sweep: a folder (or `organism` / `organism-direct`), its own lambda if it
    has one (transitions need lambdas), and a name for its condition."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str
    lambda_: float | None = Field(default=None, alias="lambda", ge=0.0, le=1.0)
    name: str | None = None


class FtriSpec(_Spec):
    task: str
    split: Literal["discovery", "evaluation"] = "discovery"
    target: list[str] = Field(default_factory=lambda: ["refused"])  # labels of the target class
    other: list[str] | None = None  # default: every other scored label
    span: Span = "prompt"
    score: Score = "mean_diff"
    k: int = Field(default=10, ge=1)
    always_on_threshold: float | None = Field(default=0.5, gt=0, le=1)
    exclude: dict[int, list[int]] = Field(default_factory=dict)
    bootstrap: int = Field(default=200, ge=0)

    @property
    def excluded(self) -> ExpertSet:
        return ExpertSet.from_mapping(self.exclude)


class TargetedSpec(_Spec):
    modes: list[Mode] = Field(default_factory=lambda: list[Mode](["drop"]), min_length=1)
    intervention: Path | None = None  # use this file instead of the fTRI step's top k


class RandomSpec(_Spec):
    seeds: int = Field(default=20, ge=1)
    first_seed: int = 0
    modes: list[Mode] | None = None  # default: the targeted modes


class StimulateSpec(_Spec):
    experts: Literal["targeted"] | dict[int, list[int]] = "targeted"
    per_layer_max: int | None = Field(default=None, ge=1)  # forced experts per layer, best-ranked first (<= top_k)


class KSweepSpec(_Spec):
    ks: list[int] = Field(min_length=1)
    random_seeds: int = Field(default=5, ge=0)
    mode: Mode = "drop"

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError("k values must be >= 1")
        return sorted(set(ks))


class ConditionsSpec(_Spec):
    baseline: bool = True
    targeted: TargetedSpec | None = Field(default_factory=lambda: TargetedSpec())
    random: RandomSpec | None = Field(default_factory=lambda: RandomSpec())
    stimulate: StimulateSpec | None = None
    k_sweep: KSweepSpec | None = None


class EvaluationSpec(_Spec):
    split: Literal["discovery", "evaluation", "all"] = "evaluation"
    allow_discovery_overlap: bool = False


class Suite(_Spec):
    schema_version: Literal[1] = 1
    name: str
    # local folder or "organism" (backend openai: the served model's local folder, for its tokenizer), or a
    # child assembled at load ({assemble: RECIPE.yaml})
    model: str | AssembledModelSpec | None = None
    # a model sweep (instead of model): a recipe's children across lambda, or a list of model folders
    assembly: AssemblySweepSpec | None = None
    models: list[str | SweepModelSpec] | None = Field(default=None, min_length=1)
    backend: Literal["hf", "vllm", "openai"] = "hf"
    engine_args: dict[str, Any] = Field(default_factory=dict)  # passed to vllm.LLM unchanged (vllm backend)
    server: ServerSpec | None = None  # backend openai
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    tasks: list[TaskSpec] = Field(min_length=1)
    judges: dict[str, EndpointSpec] = Field(default_factory=dict)  # e.g. {"refusal-llm": {...}}
    ftri: FtriSpec | None = None
    conditions: ConditionsSpec = Field(default_factory=ConditionsSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    bootstrap_resamples: int = Field(default=2000, ge=100)
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> Suite:
        names = [t.name for t in self.tasks]
        self._check_sweep()
        if self.backend == "openai" and self.server is None:
            raise _field_error(
                "server", "{base_url, model} of a `harness serve --dev-rpc` endpoint (backend openai needs one)"
            )
        if len(names) != len(set(names)):
            raise _field_error("tasks", f"unique task names (got {names})")
        needs_ftri = self.conditions.targeted is not None and self.conditions.targeted.intervention is None
        if needs_ftri and self.ftri is None:
            raise _field_error("ftri", "an ftri step (conditions.targeted has no intervention file)")
        if self.ftri is not None:
            if self.ftri.task not in names:
                raise _field_error("ftri.task", f"one of the tasks {names} (got {self.ftri.task!r})")
            overlap = self.evaluation.split in (self.ftri.split, "all")
            if overlap and not self.evaluation.allow_discovery_overlap:
                raise _field_error(
                    "evaluation.split",
                    f"a split other than the fTRI split {self.ftri.split!r} (got {self.evaluation.split!r}): "
                    "evaluating on discovery prompts inflates the effect; set "
                    "evaluation.allow_discovery_overlap: true to do it anyway (the report will say so)",
                )
        for i, task in enumerate(self.tasks):
            for llm_judge in ("refusal-llm", "mt-bench"):
                if task.judge_name == llm_judge and llm_judge not in self.judges:
                    raise _field_error(
                        f"judges.{llm_judge}", f"an endpoint: task {task.name!r} (tasks.{i}) uses {llm_judge}"
                    )
        return self

    def _check_sweep(self) -> None:
        given = [k for k in ("model", "assembly", "models") if getattr(self, k) is not None]
        if len(given) != 1:
            raise _field_error(
                "model",
                "exactly one of model (one model), assembly (a sweep over a recipe's children) or models (a "
                f"sweep over model folders) (got {given or 'none'})",
            )
        if self.is_sweep and self.ftri is not None:
            raise _field_error(
                "ftri",
                "no ftri step in a model sweep: a sweep carries one fixed intervention to every child "
                "(conditions.targeted.intervention); run fTRI on a parent or a child with its own suite",
            )
        if self.is_sweep and self.backend == "openai":
            raise _field_error("backend", "hf or vllm for a model sweep (a server serves one model)")
        if self.models is not None:
            names = [
                m.name or Path(m.path).name if isinstance(m, SweepModelSpec) else Path(m).name for m in self.models
            ]
            if len(set(names)) != len(names):
                raise _field_error("models", f"models with distinct names (got {names}; give each a name)")

    @property
    def is_sweep(self) -> bool:
        return self.assembly is not None or self.models is not None

    @property
    def model_name(self) -> str:
        if self.assembly is not None:
            a = self.assembly
            return f"sweep {a.recipe.stem}: {a.parent} on {'+'.join(a.groups)} over {len(a.lambdas)} lambdas"
        if self.models is not None:
            return f"sweep of {len(self.models)} models"
        assert self.model is not None
        return self.model if isinstance(self.model, str) else self.model.name

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(path, "<file>", "a readable suite YAML file", str(err)) from None
    except yaml.YAMLError as err:
        raise InputError(path, "<file>", "valid YAML", str(err).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise InputError(path, "<top level>", "a mapping (name, model, tasks, ...)", data)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for task in data.get("tasks") or []:  # task paths are relative to the suite file
        if isinstance(task, dict) and task.get("path"):
            task["path"] = str((path.parent / task["path"]).resolve())
    model = data.get("model")
    if isinstance(model, dict) and model.get("assemble"):  # a recipe is relative to the suite file too
        model["assemble"] = str((path.parent / str(model["assemble"])).resolve())
    sweep = data.get("assembly")
    if isinstance(sweep, dict) and sweep.get("recipe"):
        sweep["recipe"] = str((path.parent / str(sweep["recipe"])).resolve())
    targeted = (data.get("conditions") or {}).get("targeted")
    if isinstance(targeted, dict) and targeted.get("intervention"):
        targeted["intervention"] = str((path.parent / targeted["intervention"]).resolve())
    try:
        return Suite.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = first.get("ctx", {}).get("field") or ".".join(str(p) for p in first["loc"]) or "<top level>"
        expected = str(first.get("msg", "a valid value")).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            expected = "no such key"
        got = first.get("input") if first["type"] not in ("missing", "extra_forbidden") else None
        if isinstance(got, dict):
            got = None
        raise InputError(path, field, expected, got) from None
