"""`harness judge`: label a JSONL of responses with one judge and write the labels as JSONL.

Input lines carry `id` and `response` (or `text`, as `harness generate` writes it), plus `prompt`
for the LLM refusal judge, and optionally `think` / `answer`; when those are absent the response is
split at `</think>` here. MT-Bench lines carry `question_id`, `turn` and `answers` (or `response`).
Output lines are the input line plus `label` and `judgement` (the judge's typed record, with its
prompt id/version and provenance). Malformed lines are reported with their line numbers on stderr
and skipped; the good lines are still judged, and the exit code is then 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from harness.common.errors import InputError
from harness.mote.think import split_think
from judges import language, string_match
from judges.labels import UNSCORED, Judgement

if TYPE_CHECKING:  # the LLM judges bring the openai client, the agreement statsmodels: imported where used
    from judges import mt_bench, refusal_llm
    from judges.cache import ReplyCache
    from judges.client import JudgeClient

JUDGES = ("refusal-llm", "refusal-string", "reasoning-language", "mt-bench")
LLM_JUDGES = ("refusal-llm", "mt-bench")
DEFAULT_CACHE = Path(".cache") / "judges.sqlite"

Line = dict[str, Any]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("judge", help="label responses with a judge (refusal, language, MT-Bench)")
    p.add_argument("--judge", required=True, choices=JUDGES)
    p.add_argument("--in", dest="inp", type=Path, help="JSONL: id, response [, prompt, think]")
    p.add_argument("--out", type=Path, help="output JSONL (input line + label + judgement)")
    p.add_argument(
        "--run",
        type=Path,
        metavar="RUN_DIR",
        help="re-judge a finished run's samples into RUN_DIR/judges/ (its own labels untouched) and write "
        "the judges' agreement (RUN_DIR/judge_agreement.json)",
    )
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (LLM judges)")
    p.add_argument("--judge-model", help="judge model name (LLM judges)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the env var holding the API key")
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per judge call")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="sqlite reply cache")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--mt-bench-dir", type=Path, help="MT-Bench folder in FastChat's layout")
    p.add_argument("--agree-with", type=Path, help="another judge's output JSONL: report Cohen's kappa")
    p.add_argument(
        "--primary",
        action="store_true",
        help="with --run: recompute summary.json and leaderboard.md with this judge as the tasks' judge",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


SHOWN_PROBLEMS = 5  # bad lines printed one by one; the rest are counted


def run(args: argparse.Namespace) -> int:
    if args.run is not None:
        return _rejudge_run(args)
    for flag, value in (("--in", args.inp), ("--out", args.out)):
        if value is None:
            raise InputError(flag, flag, "a file (or --run RUN_DIR to re-judge a finished run)")
    _check_arguments(args)  # before any line is read
    _check_endpoint(args)
    lines, problems = read_lines(args.inp)
    if not lines:
        raise InputError(args.inp, "--in", "at least one JSON line with an id", f"{len(problems)} bad lines")
    _print_problems(problems)
    judgements = _judge(args, lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for line, judgement in zip(lines, judgements, strict=True):
            record = {**line, "label": judgement.label, "judgement": judgement.model_dump(mode="json")}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    _print_summary(args, judgements, len(problems))
    if args.agree_with:
        _print_agreement(args, judgements)
    return 2 if problems else 0


def _rejudge_run(args: argparse.Namespace) -> int:
    from harness.run.rejudge import agreement_markdown, load_run, rejudge, write_agreement
    from harness.suite.schema import EndpointSpec

    if args.inp is not None or args.out is not None:
        raise InputError("--run", "--run", "either --run RUN_DIR or --in/--out, not both")
    load_run(args.run)  # a folder that is no run is refused before any judge is called
    endpoint = None
    if args.judge in ("refusal-llm", "mt-bench"):
        _check_arguments(args, bench_dir=False)  # a run's MT-Bench task names its own folder
        endpoint = EndpointSpec(
            base_url=args.endpoint,
            model=args.judge_model,
            api_key_env=args.api_key_env,
            max_concurrency=args.max_concurrency,
        )
        _check_endpoint(args)
    out = rejudge(args.run, args.judge, endpoint, progress=not args.no_progress)
    if args.primary:
        from harness.run.rejudge import make_primary

        print(f"summary with {out.stem} as primary judge: {make_primary(args.run, out)}")
    path, rows = write_agreement(args.run)
    (args.run / "judge_agreement.md").write_text(agreement_markdown(rows), encoding="utf-8")
    print(f"labels: {out}")
    print(agreement_markdown(rows), end="")
    print(f"agreement: {path} (and judge_agreement.md; `harness report` shows it)")
    return 0


def _check_endpoint(args: argparse.Namespace) -> None:
    """One one-token call to an LLM judge's endpoint: a wrong URL, key or model is found before any line."""
    if args.judge not in ("refusal-llm", "mt-bench"):
        return
    from judges.client import EndpointConfig
    from judges.preflight import endpoint_problem

    config = EndpointConfig(base_url=args.endpoint, model=args.judge_model, api_key_env=args.api_key_env)
    problem = endpoint_problem(config)
    if problem is not None:
        raise InputError("--endpoint", "--endpoint", f"a judge that answers at {args.endpoint}", problem)


def _check_arguments(args: argparse.Namespace, bench_dir: bool = True) -> None:
    if args.judge not in ("refusal-llm", "mt-bench"):
        return
    for flag, value in (("--endpoint", args.endpoint), ("--judge-model", args.judge_model)):
        if not value:
            raise InputError(flag, flag.lstrip("-").replace("-", "_"), f"a value for judge {args.judge}")
    from judges.client import read_api_key

    read_api_key(args.api_key_env)
    if bench_dir and args.judge == "mt-bench" and args.mt_bench_dir is None:
        raise InputError("--mt-bench-dir", "mt_bench_dir", "the MT-Bench folder (FastChat layout)")


def _print_problems(problems: Sequence[str]) -> None:
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"harness judge: {problem}", file=sys.stderr)
    if len(problems) > SHOWN_PROBLEMS:
        print(f"harness judge: ... and {len(problems) - SHOWN_PROBLEMS} more", file=sys.stderr)


def read_lines(path: Path) -> tuple[list[Line], list[str]]:
    """Parsed JSON objects with an `id`, and a message per bad line naming file and line number."""
    if not path.is_file():
        raise InputError(path, "--in", "an existing JSONL file")
    good: list[Line] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not JSON ({err.msg})")
            continue
        if not isinstance(line, dict) or not isinstance(line.get("id"), (str, int)):
            problems.append(f"{path}:{number}: field 'id': expected a string or integer id")
            continue
        line["id"] = str(line["id"])
        if line["id"] in seen:
            problems.append(f"{path}:{number}: field 'id': duplicate id {line['id']!r}")
            continue
        seen.add(line["id"])
        line["_line"] = number
        good.append(line)
    return good, problems


def _judge(args: argparse.Namespace, lines: list[Line]) -> list[Judgement]:
    """Build each line's judge input; lines the judge cannot read become unscored, with the reason."""
    build: dict[str, Callable[[Line], BaseModel]] = {
        "refusal-llm": _refusal_item,
        "refusal-string": _text_item,
        "reasoning-language": _text_item,
        "mt-bench": _mt_bench_item,
    }
    items: list[BaseModel | str] = []
    for line in lines:
        try:
            items.append(build[args.judge](line))
        except (ValidationError, ValueError, KeyError, TypeError) as err:
            items.append(f"{args.inp}:{line['_line']}: cannot judge: {_brief(err)}")
    _print_problems([item for item in items if isinstance(item, str)])
    ok = [item for item in items if not isinstance(item, str)]
    results = iter(_run_judge(args, ok))
    out: list[Judgement] = []
    for line, item in zip(lines, items, strict=True):
        if isinstance(item, str):
            out.append(_unscored(args.judge, line["id"], item.split(": ", 1)[1]))
        else:
            out.append(next(results))
    for line in lines:
        line.pop("_line", None)
    return out


def _run_judge(args: argparse.Namespace, items: Sequence[BaseModel]) -> list[Judgement]:
    if args.judge == "refusal-string":
        return [string_match.judge(i.id, i.answer) for i in items if isinstance(i, _TextItem)]
    if args.judge == "reasoning-language":
        return [language.judge(i.id, i.think) for i in items if isinstance(i, _TextItem)]
    from judges import mt_bench, refusal_llm

    client, cache = _client(args)
    progress = not args.no_progress
    try:
        if args.judge == "refusal-llm":
            refusal = [i for i in items if isinstance(i, refusal_llm.RefusalItem)]
            return list(refusal_llm.judge_many(refusal, client, progress=progress))
        if args.mt_bench_dir is None:
            raise InputError("--mt-bench-dir", "mt_bench_dir", "the MT-Bench folder (FastChat layout)")
        from harness.suite.task_definitions import load_mt_bench

        bench = load_mt_bench(args.mt_bench_dir)
        graded = [i for i in items if isinstance(i, mt_bench.MTBenchItem)]
        return list(mt_bench.judge_many(bench, graded, client, progress=progress))
    finally:
        if cache is not None:
            cache.close()
        _client_summary(client)


def _client(args: argparse.Namespace) -> tuple[JudgeClient, ReplyCache | None]:
    from judges.cache import ReplyCache
    from judges.client import EndpointConfig, JudgeClient

    for flag, value in (("--endpoint", args.endpoint), ("--judge-model", args.judge_model)):
        if not value:
            raise InputError(flag, flag.lstrip("-").replace("-", "_"), f"a value for judge {args.judge}")
    try:
        config = EndpointConfig(
            base_url=args.endpoint,
            model=args.judge_model,
            api_key_env=args.api_key_env,
            max_concurrency=args.max_concurrency,
            max_retries=args.max_retries,
            timeout_s=args.timeout,
        )
    except ValidationError as err:
        raise InputError("command line", "judge client", _brief(err)) from err
    cache = None if args.no_cache else ReplyCache(args.cache)
    return JudgeClient(config, cache), cache


class _TextItem(BaseModel):
    id: str
    answer: str
    think: str | None


def _split(line: Line) -> tuple[str | None, str]:
    text = line.get("response", line.get("text"))
    if "answer" in line and "think" in line:
        return line["think"], str(line["answer"])
    if not isinstance(text, str):
        raise ValueError("field 'response' (or 'text'): expected a string")
    think, answer = split_think(text)
    return line.get("think", think), str(line.get("answer", answer))


def _text_item(line: Line) -> _TextItem:
    think, answer = _split(line)
    return _TextItem(id=line["id"], answer=answer, think=think)


def _refusal_item(line: Line) -> refusal_llm.RefusalItem:
    from judges import refusal_llm

    think, answer = _split(line)
    if not isinstance(line.get("prompt"), str):
        raise ValueError("field 'prompt': expected the user prompt as a string")
    return refusal_llm.RefusalItem(id=line["id"], prompt=line["prompt"], answer=answer, think=think)


def _mt_bench_item(line: Line) -> mt_bench.MTBenchItem:
    from judges import mt_bench

    answers = line.get("answers")
    if answers is None:
        answers = [split_think(str(line["response"]))[1]]
    return mt_bench.MTBenchItem(
        id=line["id"], question_id=line["question_id"], turn=line.get("turn", 1), answers=tuple(answers)
    )


class _Unscored(Judgement):
    """A line that never reached the judge (unreadable for this judge)."""


def _unscored(judge: str, item_id: str, reason: str) -> Judgement:
    return _Unscored(id=item_id, judge=judge, judge_version="input", label=UNSCORED, unscored_reason=reason)


def _brief(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"field '{'.'.join(str(p) for p in first['loc'])}': {first['msg']}"
    return str(err)


def _print_summary(args: argparse.Namespace, judgements: Sequence[Judgement], bad_lines: int) -> None:
    counts = Counter(j.label for j in judgements)
    parts = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    print(f"{args.judge}: {len(judgements)} judged ({parts}); {bad_lines} malformed lines; wrote {args.out}")


def _client_summary(client: JudgeClient) -> None:
    s = client.stats
    print(
        f"judge calls: {s.requests} sent, {s.cache_hits} from cache, {s.failures} failed; "
        f"tokens: {s.prompt_tokens} prompt, {s.completion_tokens} completion",
        file=sys.stderr,
    )


def _print_agreement(args: argparse.Namespace, judgements: Sequence[Judgement]) -> None:
    from judges.agreement import binary_refusal, cohen_kappa

    other, problems = read_lines(args.agree_with)
    if problems:
        raise InputError(args.agree_with, "(lines)", "a valid judge output JSONL", problems[0])
    theirs = {line["id"]: str(line.get("label")) for line in other}
    ours = {j.id: j.label for j in judgements}
    labels = set(ours.values()) | set(theirs.values())
    collapse = binary_refusal if {"complied", "aligned", "reasoned"} & labels else None
    agreement = cohen_kappa(ours, theirs, collapse=collapse)
    print(
        f"agreement with {args.agree_with}: n={agreement.n} accuracy={agreement.accuracy:.3f} "
        f"kappa={agreement.kappa:.3f} (categories {', '.join(agreement.categories)}; "
        f"{agreement.excluded_unscored} unscored excluded)"
    )
