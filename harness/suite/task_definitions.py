"""Task definitions as validated data: the sensitive time/place grid, the reasoning-language
prompts and MT-Bench read from a FastChat-layout folder.

Tasks are plain YAML/JSONL checked by the pydantic models below; the only logic is the expansion of
the sensitive grid (`expand_sensitive`) and the MT-Bench turn protocol (`mt_bench_messages`).
Bad data raises `InputError` naming the file, the line or field, and what was expected.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from itertools import product
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.common.errors import InputError

SCHEMA_VERSION = 1

Split = Literal["discovery", "evaluation"]
PromptLanguage = Literal["en", "zh"]

M = TypeVar("M", bound=BaseModel)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def task_data(*parts: str) -> Traversable:
    """A file shipped in `tasks/` (installed as `harness._tasks`), found without a source checkout."""
    node: Traversable = resources.files("harness._tasks")
    for part in parts:
        node = node / part
    return node


def _first_error(err: ValidationError) -> tuple[str, str, object]:
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or "(record)", first["msg"], first.get("input")


def read_jsonl(path: Path | Traversable, model: type[M]) -> list[M]:
    """Every line as `model`; the first bad line raises, naming the file and the line number."""
    records: list[M] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(model.model_validate_json(line))
        except ValidationError as err:
            field, msg, got = _first_error(err)
            raise InputError(f"{path}:{number}", field, msg, got) from err
    return records


def _read_yaml(path: Path | Traversable, model: type[M]) -> M:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return model.model_validate(data)
    except yaml.YAMLError as err:
        raise InputError(str(path), "(file)", "valid YAML", str(err)) from err
    except ValidationError as err:
        field, msg, got = _first_error(err)
        raise InputError(str(path), field, msg, got) from err


# --- sensitive time/place task ---------------------------------------------------------------


class Localised(_Record):
    """One time or place phrase in each prompt language ("on June 4, 1989" / "1989年6月4日")."""

    en: str
    zh: str


class Template(_Record):
    id: str
    language: PromptLanguage
    text: str

    @model_validator(mode="after")
    def _has_slots(self) -> Template:
        if "{time}" not in self.text or "{place}" not in self.text:
            raise ValueError("template text must contain {time} and {place}")
        return self


class Topic(_Record):
    id: str
    kind: Literal["sensitive", "control"]
    description: str
    times: tuple[Localised, ...] = Field(min_length=1)
    places: tuple[Localised, ...] = Field(min_length=1)


class SensitiveTaskSpec(_Record):
    """tasks/sensitive/task.yaml: templates x topics, each topic a grid of times x places."""

    schema_version: Literal[1] = 1
    name: str
    templates: tuple[Template, ...] = Field(min_length=2)
    topics: tuple[Topic, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> SensitiveTaskSpec:
        for kind, ids in (
            ("template", [t.id for t in self.templates]),
            ("topic", [t.id for t in self.topics]),
        ):
            if len(ids) != len(set(ids)):
                raise ValueError(f"{kind} ids must be unique")
        return self


class SensitivePrompt(_Record):
    schema_version: int = SCHEMA_VERSION
    id: str
    prompt: str
    topic: str
    kind: Literal["sensitive", "control"]
    time: str
    place: str
    template: str
    language: PromptLanguage
    split: Split


def split_of(topic_index: int, template_index: int) -> Split:
    """Fixed split of a (topic, template) pair: alternating, so each topic has templates in both
    splits, each template serves both splits, and no (topic, template) pair is in both."""
    return "discovery" if (topic_index + template_index) % 2 == 0 else "evaluation"


def expand_sensitive(spec: SensitiveTaskSpec) -> list[SensitivePrompt]:
    prompts: list[SensitivePrompt] = []
    for i, topic in enumerate(spec.topics):
        for j, template in enumerate(spec.templates):
            lang = template.language
            for (ti, time), (pi, place) in product(enumerate(topic.times), enumerate(topic.places)):
                prompts.append(
                    SensitivePrompt(
                        id=f"{topic.id}/{template.id}/t{ti}p{pi}",
                        prompt=template.text.format(time=getattr(time, lang), place=getattr(place, lang)),
                        topic=topic.id,
                        kind=topic.kind,
                        time=getattr(time, lang),
                        place=getattr(place, lang),
                        template=template.id,
                        language=lang,
                        split=split_of(i, j),
                    )
                )
    return prompts


def load_sensitive(path: Path | None = None, split: Split | None = None) -> list[SensitivePrompt]:
    """The packaged grid (or the spec at `path`), optionally one split only."""
    source = path if path is not None else task_data("sensitive", "task.yaml")
    prompts = expand_sensitive(_read_yaml(source, SensitiveTaskSpec))
    return [p for p in prompts if split is None or p.split == split]


# --- reasoning-language task -----------------------------------------------------------------


class ReasoningPrompt(_Record):
    schema_version: int = SCHEMA_VERSION
    id: str
    prompt: str
    language: PromptLanguage
    category: str


def load_reasoning_language(path: Path | None = None) -> list[ReasoningPrompt]:
    source = path if path is not None else task_data("reasoning_language", "prompts.jsonl")
    return read_jsonl(source, ReasoningPrompt)


# --- MT-Bench (FastChat layout, read from a folder; the data is not shipped) -----------------

# FastChat's temperature_config and NEED_REF_CATS.
MT_BENCH_TEMPERATURE: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
MT_BENCH_NEEDS_REFERENCE = frozenset({"math", "reasoning", "coding"})


class MTBenchQuestion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    question_id: int
    category: str
    turns: tuple[str, str]


class _RefChoice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    turns: tuple[str, ...]


class MTBenchReference(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    question_id: int
    choices: tuple[_RefChoice, ...] = Field(min_length=1)

    @property
    def turns(self) -> tuple[str, ...]:
        return self.choices[0].turns


class JudgePrompt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str


class MTBench(_Record):
    source: str
    questions: tuple[MTBenchQuestion, ...]
    references: dict[int, MTBenchReference]
    judge_prompts: dict[str, JudgePrompt]

    def question(self, question_id: int) -> MTBenchQuestion:
        for q in self.questions:
            if q.question_id == question_id:
                return q
        raise InputError(self.source, "question_id", "an MT-Bench question id", question_id)


def load_mt_bench(folder: Path) -> MTBench:
    """question.jsonl, reference_answer/gpt-4.jsonl and judge_prompts.jsonl from `folder`."""
    folder = Path(folder)
    for name in ("question.jsonl", "reference_answer/gpt-4.jsonl", "judge_prompts.jsonl"):
        if not (folder / name).is_file():
            raise InputError(folder, name, "an MT-Bench folder in FastChat's layout (file missing)")
    questions = read_jsonl(folder / "question.jsonl", MTBenchQuestion)
    unknown = sorted({q.category for q in questions} - set(MT_BENCH_TEMPERATURE))
    if unknown:
        raise InputError(
            folder / "question.jsonl", "category", f"one of {sorted(MT_BENCH_TEMPERATURE)}", unknown
        )
    references = read_jsonl(folder / "reference_answer" / "gpt-4.jsonl", MTBenchReference)
    prompts = read_jsonl(folder / "judge_prompts.jsonl", JudgePrompt)
    return MTBench(
        source=str(folder),
        questions=tuple(questions),
        references={r.question_id: r for r in references},
        judge_prompts={p.name: p for p in prompts},
    )


def mt_bench_messages(
    question: MTBenchQuestion, turn: Literal[1, 2], first_answer: str | None = None
) -> list[dict[str, str]]:
    """Chat messages for one turn: turn 2 carries turn 1's question and the model's own answer."""
    if turn == 1:
        return [{"role": "user", "content": question.turns[0]}]
    if first_answer is None:
        raise InputError(f"mt_bench/{question.question_id}", "first_answer", "turn 1's answer to ask turn 2")
    return [
        {"role": "user", "content": question.turns[0]},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": question.turns[1]},
    ]


def mt_bench_temperature(question: MTBenchQuestion) -> float:
    return MT_BENCH_TEMPERATURE[question.category]
