"""`harness run`: discovery (fTRI), every condition, judging and statistics for one suite.

The one place that wires backends, judges, fTRI and statistics together. Every sample and label is
appended to the run folder as soon as its batch finishes, so `--resume` continues after a crash
without losing, duplicating or re-judging anything.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harness.analysis import ftri, ftri_files
from harness.analysis.metrics import (
    Condition,
    agreement_rows,
    language_rows,
    mt_bench_rows,
    qa_rows,
    refusal_rows,
    unscored_rows,
)
from harness.analysis.summary import MetricRow, write_summary
from harness.backends.base import Backend, GenerationRequest, GenerationResult, GenerationSettings
from harness.backends.replicas import REPLICA_COUNTS
from harness.common.errors import InputError
from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention, Mode, load_intervention
from harness.mote.random_baseline import random_intervention_like
from harness.mote.records import RoutingRecord, Span, SpanCounts
from harness.mote.spec import ModelSpec
from harness.run.judge_set import JudgeSet, cross_check_judge, endpoint_config
from harness.run.run_store import RunStore, label_key, provenance, sample_key
from harness.suite.schema import AssembledModelSpec, StimulateSpec, Suite
from harness.suite.task_prompts import TaskPrompt, load_task_prompts
from harness.sweep import summary as sweep_summary
from harness.sweep.children import SweepModel, model_folder, sweep_models

SCHEMA_VERSION = 1
DISCOVERY = "discovery"


@dataclass(frozen=True)
class WorkItem:
    task: str
    condition: Condition
    prompt: TaskPrompt

    def request(self) -> GenerationRequest:
        p = self.prompt
        return GenerationRequest(
            id=p.id, prompt=p.prompt, messages=p.messages, intervention=self.condition.intervention
        )


class Runner:
    def __init__(
        self,
        suite: Suite,
        suite_path: Path,
        run_dir: Path,
        resume: bool = False,
        backend_factory: Callable[[Path, Suite], Backend] | None = None,
        check_judges: bool = True,
    ) -> None:
        self.suite = suite
        self.suite_path = suite_path
        self.store = RunStore(run_dir)
        self.resume = resume
        self._backend_factory = backend_factory or make_backend
        self._backend: Backend | None = None
        self._replicas_before: dict[str, dict[str, Any]] | None = None  # run.json's replica counts at resume
        self._primary: dict[tuple[str, str, str], str] = {}  # use_primary_labels
        if suite.backend == "vllm":
            from harness.vllm_plugin.availability import require_vllm

            require_vllm(str(suite_path), "backend")
        self.sweep: list[SweepModel] | None = sweep_models(suite, suite_path) if suite.is_sweep else None
        self._backend_model: str | None = None  # the sweep model the loaded backend runs
        self.model_path = _resolve_model(suite, suite_path) if self.sweep is None else model_folder(self.sweep[0])
        self.spec = self._inspect()
        self.prompts = {t.name: load_task_prompts(t, suite_path) for t in suite.tasks}
        self.targeted_file = self._load_targeted_file()
        self._check_inputs()
        if check_judges:
            self._check_judges()

    # -- set-up: every check before any model loads -------------------------------------------
    def _inspect(self) -> ModelSpec:
        from harness.backends.hf_discovery import inspect_model

        return inspect_model(self.model_path)

    def _load_targeted_file(self) -> Intervention | None:
        from harness.backends.hf_discovery import inspect_model

        targeted = self.suite.conditions.targeted
        if targeted is None or targeted.intervention is None:
            return None
        intervention = load_intervention(targeted.intervention)
        self.spec.check(intervention, targeted.intervention)
        for model in self.sweep or []:  # carried to every model of a sweep: it must fit each
            if model.kind == "model" and model.folder is not None:
                inspect_model(model.folder).check(intervention, f"{targeted.intervention} on {model.name}")
        return intervention

    def _check_inputs(self) -> None:
        ftri_spec = self.suite.ftri
        if ftri_spec is not None and ftri_spec.exclude:
            self.spec.check(Intervention.suppress(ftri_spec.excluded), f"{self.suite_path}: ftri.exclude")
        stim = self.suite.conditions.stimulate
        if stim is not None and isinstance(stim.experts, dict):
            self.spec.check(Intervention.stimulate(stim.experts), f"{self.suite_path}: conditions.stimulate.experts")
        split = self.suite.evaluation.split
        for task in self.suite.tasks:
            if not any(p.in_split(split) for p in self.prompts[task.name]):
                raise InputError(self.suite_path, f"tasks.{task.name}", f"prompts in the {split!r} split")
        if ftri_spec is not None and not any(p.in_split(ftri_spec.split) for p in self.prompts[ftri_spec.task]):
            raise InputError(self.suite_path, "ftri.split", f"prompts of task {ftri_spec.task!r} in that split")
        if ftri_spec is not None and split != "all" and not self.suite.evaluation.allow_discovery_overlap:
            unsplit = [p.id for p in self.prompts[ftri_spec.task] if p.split is None]
            if unsplit:  # a prompt without a split is in every split: discovered on and evaluated
                raise InputError(
                    self.suite_path,
                    f"tasks.{ftri_spec.task}",
                    "a split (discovery / evaluation) on every prompt of the fTRI task, or "
                    f"evaluation.allow_discovery_overlap: true; {len(unsplit)} have none, e.g. {unsplit[:3]}",
                )

    def _check_judges(self) -> None:
        """One minimal call to every LLM judge the tasks use, before any model loads."""
        from judges.preflight import endpoint_problem

        used = {t.judge_name for t in self.suite.tasks} & {"refusal-llm", "mt-bench"}
        for name in sorted(used):
            endpoint = self.suite.judges[name]
            problem = endpoint_problem(endpoint_config(endpoint))
            if problem is not None:
                raise InputError(
                    self.suite_path,
                    f"judges.{name}",
                    f"a judge that answers a one-token call at {endpoint.base_url} with model {endpoint.model!r} "
                    f"(it answered: {problem}; --skip-judge-check skips this call)",
                )

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._backend_factory(self.model_path, self.suite)
        return self._backend

    def _use_model(self, name: str | None) -> None:
        """Load a sweep model's backend, releasing the previous model's first (one model at a time)."""
        if self.sweep is None or name == self._backend_model:
            return
        self._release_backend()
        model = next(m for m in self.sweep if m.name == name)
        self.model_path = model_folder(model)
        self._backend_model = name

    def _release_backend(self) -> None:
        """Free the loaded model before the next one loads (a vLLM engine shuts down; HF weights are
        freed): the runner lets go of it first, so the collection finds nothing holding it."""
        import gc

        backend, self._backend = self._backend, None
        close = getattr(backend, "close", None)
        if callable(close):
            close()
        del backend
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # the freed blocks back to the device for the next model

    def _open_store(self) -> None:
        root = self.store.root
        suite_dump = self.suite.model_dump(mode="json")
        if self.resume:
            if not (root / "run.json").exists():
                raise InputError(root, "run.json", "a run folder to resume (made by harness run)")
            previous = self.store.read_json("run.json")
            if previous.get("suite") != suite_dump:
                raise InputError(root / "run.json", "suite", "the same suite as the interrupted run")
            self.store.repair()
            return
        if root.exists() and any(root.iterdir()):
            raise InputError(root, "<folder>", "a new run folder (use --resume to continue this one)")
        root.mkdir(parents=True, exist_ok=True)
        self.store.write_json(
            "run.json",
            {
                "schema_version": SCHEMA_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "suite_file": str(self.suite_path),
                "suite": suite_dump,
                "model_spec": {
                    "family": self.spec.family,
                    "moe_layers": list(self.spec.moe_layers),
                    "n_experts": self.spec.n_experts,
                    "top_k": self.spec.top_k,
                },
                **provenance(self.model_path),
                **({"sweep": [_sweep_entry(m) for m in self.sweep]} if self.sweep is not None else {}),
            },
        )

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> list[MetricRow]:
        self._open_store()
        excluded = self.suite.ftri.excluded if self.suite.ftri else ExpertSet()
        ranking: ftri.FtriResult | None = None
        if self.suite.ftri is not None:
            ranking = self._discover()
            excluded = ranking.excluded
        conditions = self._conditions(ranking, excluded)
        self._record_conditions(conditions)
        split = self.suite.evaluation.split
        work = [
            WorkItem(task.name, cond, p)
            for task in self.suite.tasks
            if task.type != "mt_bench"
            for cond in conditions
            for p in self.prompts[task.name]
            if p.in_split(split)
        ]
        self._generate(work, "evaluate", record=False)
        work += self._mt_bench(conditions)
        self._judge(work, "judge")
        data = self._sweep_data() if self.sweep is not None else None  # read once: rows and transitions
        rows = self._summarise(conditions, data)
        from harness.report.run_table import leaderboard_markdown

        if self.sweep is None:
            write_summary(rows, self.store.root / "summary.json")
            self.store.write_text("leaderboard.md", leaderboard_markdown(rows, self.suite, ranking))
            return rows
        from harness.sweep.report import sweep_markdown

        assert data is not None
        found = sweep_summary.transitions(data, conditions)
        write_summary(rows, self.store.root / "summary.json", [t.model_dump() for t in found])
        self.store.write_text("leaderboard.md", sweep_markdown(rows, found, self.suite, self.sweep))
        return rows

    def _mt_bench(self, conditions: Sequence[Condition]) -> list[WorkItem]:
        """Both MT-Bench turns under every condition; turn 2 carries the condition's own turn-1 answer."""
        from harness.suite.task_prompts import mt_bench_turn2

        items: list[WorkItem] = []
        for task in self.suite.tasks:
            if task.type != "mt_bench":
                continue
            turn1 = [WorkItem(task.name, cond, p) for cond in conditions for p in self.prompts[task.name]]
            self._generate(turn1, f"{task.name} turn 1", record=False)
            answers = {sample_key(r): r["answer"] for r in self.store.records(self.store.samples_file)}
            turn2 = [
                WorkItem(
                    w.task, w.condition, mt_bench_turn2(w.prompt, answers[(w.task, w.condition.name, w.prompt.id)])
                )
                for w in turn1
            ]
            self._generate(turn2, f"{task.name} turn 2", record=False)
            items += turn1 + turn2
        return items

    # -- discovery ----------------------------------------------------------------------------
    def _discover(self) -> ftri.FtriResult:
        spec = self.suite.ftri
        assert spec is not None
        none = Condition(DISCOVERY, "baseline", Intervention.none())
        work = [WorkItem(spec.task, none, p) for p in self.prompts[spec.task] if p.in_split(spec.split)]
        self._generate(work, "discover", record=True)
        self._judge(work, "judge discovery")
        labels = self._labels()
        judge = self.suite.task(spec.task).judge_name
        counts = self._discovery_counts()
        prompts: list[ftri.PromptCounts] = []
        unscored = 0
        for item in work:
            label = labels.get((spec.task, DISCOVERY, item.prompt.id, judge))
            if label is None or label == ftri_files.UNSCORED:
                unscored += 1
                continue
            cls = ftri_files.classify(label, spec.target, spec.other)
            if cls is None:
                continue
            map_, tokens = counts[item.prompt.id]
            prompts.append(ftri.PromptCounts(map_, tokens, cls))
        n_target = sum(p.label == ftri_files.TARGET for p in prompts)
        if n_target == 0 or n_target == len(prompts):
            raise RuntimeError(
                f"fTRI needs both classes on the {spec.split} split of {spec.task!r}: {n_target} of {len(prompts)} "
                f"judged prompts are {spec.target} ({unscored} unscored)"
            )
        layers = list(self.spec.moe_layers)
        result = ftri.rank_with_stability(
            prompts,
            layers,
            ftri_files.TARGET,
            ftri_files.OTHER,
            spec.k,
            spec.score,
            spec.excluded,
            spec.always_on_threshold,
            bootstrap=spec.bootstrap,
            seed=self.suite.seed,
        )
        self._write_ftri(result, unscored)
        target, other = ftri.class_stats(prompts, ftri_files.TARGET), ftri.class_stats(prompts, ftri_files.OTHER)
        np.savez_compressed(
            self.store.root / "ftri_maps.npz",
            layers=np.asarray(layers, dtype=np.int32),
            score=ftri.score_map(target, other, spec.score),
            mean_share_target=target.mean_share,
            mean_share_other=other.mean_share,
        )
        return result

    def _write_ftri(self, result: ftri.FtriResult, unscored: int) -> None:
        spec = self.suite.ftri
        assert spec is not None
        setup = ftri_files.FtriSetup(
            span=spec.span,
            k=spec.k,
            target_labels=spec.target,
            other_labels=spec.other,
            mode=_primary_mode(self.suite),
            task=spec.task,
            split=spec.split,
        )
        ftri_files.write_ftri(
            result,
            setup,
            self.store.root / "experts.yaml",
            self.store.root / "ftri.json",
            unscored=unscored,
            source={"run": self.store.root.name},
        )

    def _discovery_counts(self) -> dict[str, tuple[np.ndarray, int]]:
        """Per prompt of the discovery run: counts [moe_layers, n_experts] of the fTRI span, tokens."""
        spec = self.suite.ftri
        assert spec is not None
        names = [s.name.lower() for s in ftri_files.SPAN_PARTS[spec.span]]
        return {
            pid: (np.sum([row[f"counts_{n}"] for n in names], axis=0), int(sum(row[f"tokens_{n}"] for n in names)))
            for pid, row in self.store.routing_rows().items()
        }

    # -- conditions -----------------------------------------------------------------------------
    def _conditions(self, ranking: ftri.FtriResult | None, excluded: ExpertSet) -> list[Condition]:
        cfg = self.suite.conditions
        out: list[Condition] = []
        if cfg.baseline:
            out.append(Condition("baseline", "baseline", Intervention.none()))
        targeted: dict[str, Intervention] = {}
        targeted_modes: list[Mode] = list(cfg.targeted.modes) if cfg.targeted is not None else []
        if cfg.targeted is not None:
            for i, mode in enumerate(cfg.targeted.modes):
                if self.targeted_file is not None:
                    experts = self.targeted_file.experts
                else:
                    assert ranking is not None and self.suite.ftri is not None
                    experts = ranking.top(self.suite.ftri.k)
                iv = Intervention(kind="suppress", mode=mode, experts=experts, name=f"targeted-{mode}")
                targeted[mode] = iv
                out.append(Condition("targeted" if i == 0 else f"targeted:{mode}", "targeted", iv, mode=mode))
        if cfg.random is not None and targeted:
            modes: list[Mode] = cfg.random.modes or list(targeted_modes)
            for mode in modes:
                base = targeted.get(mode) or next(iter(targeted.values())).model_copy(update={"mode": mode})
                prefix = "random" if mode == "drop" else f"random:{mode}"
                for seed in range(cfg.random.first_seed, cfg.random.first_seed + cfg.random.seeds):
                    iv = random_intervention_like(base, seed, self.spec.n_experts, exclude=excluded)
                    out.append(Condition(f"{prefix}:seed={seed}", "random", iv, mode=mode, seed=seed))
        if cfg.stimulate is not None:
            experts = self._stimulate_experts(cfg.stimulate, ranking, targeted)
            out.append(Condition("stimulate", "stimulate", Intervention.stimulate(experts)))
        if cfg.k_sweep is not None:
            if ranking is None:
                raise InputError(self.suite_path, "conditions.k_sweep", "an ftri step to rank experts for the sweep")
            for k in cfg.k_sweep.ks:
                iv = Intervention(kind="suppress", mode=cfg.k_sweep.mode, experts=ranking.top(k), name=f"top{k}")
                out.append(Condition(f"k_sweep:k={k}", "k_sweep", iv, mode=cfg.k_sweep.mode, k=k))
                for seed in range(cfg.k_sweep.random_seeds):
                    rnd = random_intervention_like(iv, seed, self.spec.n_experts, exclude=excluded)
                    out.append(
                        Condition(
                            f"k_sweep:k={k}:random:seed={seed}",
                            "k_sweep_random",
                            rnd,
                            mode=cfg.k_sweep.mode,
                            seed=seed,
                            k=k,
                        )
                    )
        if self.sweep is not None:  # every condition on every model of the sweep
            return [replace(c, name=m.condition(c.name), model=m.name, lam=m.lam) for m in self.sweep for c in out]
        return out

    def _stimulate_experts(
        self,
        spec: StimulateSpec,
        ranking: ftri.FtriResult | None,
        targeted: dict[str, Intervention],
    ) -> ExpertSet:
        if isinstance(spec.experts, dict):
            return ExpertSet.from_mapping(spec.experts)
        if ranking is not None and self.suite.ftri is not None:
            ordered = [(r.layer, r.expert) for r in ranking.rows(self.suite.ftri.k)]
        elif targeted:
            ordered = list(next(iter(targeted.values())).experts)
        else:
            raise InputError(self.suite_path, "conditions.stimulate", "targeted experts (an ftri step or a file)")
        limit = min(self.spec.top_k, spec.per_layer_max or self.spec.top_k)
        per_layer: dict[int, int] = {}
        kept = []
        for layer, expert in ordered:  # at most `limit` forced experts per layer, best-ranked first
            if per_layer.get(layer, 0) < limit:
                kept.append((layer, expert))
                per_layer[layer] = per_layer.get(layer, 0) + 1
        return ExpertSet(tuple(kept))

    def _record_conditions(self, conditions: Sequence[Condition]) -> None:
        """conditions.json (each condition's intervention in full) and, in run.json, the seeds and
        the fingerprint of every condition's intervention (the identity of what was run)."""
        records = [
            {
                "name": c.name,
                "family": c.family,
                "mode": c.mode,
                "seed": c.seed,
                "k": c.k,
                **({"model": c.model, "lambda": c.lam} if c.model is not None else {}),
                "fingerprint": c.intervention.fingerprint(),
                "intervention": c.intervention.to_file_dict(),
            }
            for c in conditions
        ]
        self.store.write_json("conditions.json", records)
        run = self.store.read_json("run.json")
        cfg = self.suite.conditions
        run["seeds"] = {
            "suite": self.suite.seed,  # bootstrap resamples, fTRI stability
            "generation": self.suite.generation.seed,
            "random_first_seed": cfg.random.first_seed if cfg.random else None,
            "random_seeds": cfg.random.seeds if cfg.random else 0,
        }
        run["conditions"] = [{k: r[k] for k in ("name", "seed", "fingerprint")} for r in records]
        self.store.write_json("run.json", run)

    # -- generation -----------------------------------------------------------------------------
    def _settings(self, record: bool) -> GenerationSettings:
        g = self.suite.generation
        return GenerationSettings(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            seed=g.seed,
            record_routing=record,
            routing_counts_only=record,  # a run keeps span counts (_save_routing), never per-token ids
        )

    def _generate(self, work: Sequence[WorkItem], what: str, record: bool) -> None:
        # Routing chunks are written before their samples, so a sample on disk always has its routing.
        done = {sample_key(r) for r in self.store.records(self.store.samples_file)}
        todo = [w for w in work if (w.task, w.condition.name, w.prompt.id) not in done]
        if not todo:
            return
        settings = self._settings(record)
        with tqdm(total=len(work), initial=len(work) - len(todo), desc=what, unit="sample") as bar:
            try:
                for chunk in self._chunks(todo, settings.temperature):
                    self._generate_chunk(chunk, settings, record, bar)
            finally:  # with replicas: their counts in run.json, also when every one of them is gone
                self._note_replicas()

    def _generate_chunk(self, chunk: list[WorkItem], settings: GenerationSettings, record: bool, bar: Any) -> None:
        model = chunk[0].condition.model
        if model is not None and model != self._backend_model:
            bar.set_postfix_str(model)
            self._use_model(model)
        chunk_settings = replace(settings, temperature=_temperature(chunk[0].prompt, settings.temperature))
        results = self.backend.generate([w.request() for w in chunk], chunk_settings)
        if record:
            self._save_routing(chunk, results)
        self.store.append(self.store.samples_file, [_sample(w, r) for w, r in zip(chunk, results, strict=True)])
        if self._replica_pool() is not None:
            served = [{"task": w.task, "condition": w.condition.name, "id": r.id, "replica": r.served_by}
                      for w, r in zip(chunk, results, strict=True)]  # fmt: skip
            self.store.append(self.store.served_file, served)
            bar.set_postfix_str(self._replica_pool().progress())
        bar.update(len(chunk))

    def _replica_pool(self) -> Any:
        """The replica pool of a run over `server.base_urls` (served.jsonl, run.json `replicas`), else None."""
        if self._backend is None or self.suite.server is None or self.suite.server.base_urls is None:
            return None
        return getattr(self._backend, "pool", None)

    def _note_replicas(self) -> None:
        """Per replica what it served and how often it failed, in run.json (summed over resumes)."""
        pool = self._replica_pool()
        if pool is None:
            return
        run = self.store.read_json("run.json")
        if self._replicas_before is None:  # what earlier processes of this run counted
            self._replicas_before = {r["url"]: r for r in run.get("replicas", [])}
        run["replicas"] = [
            {**now, **{k: now[k] + self._replicas_before.get(now["url"], {}).get(k, 0) for k in REPLICA_COUNTS}}
            for now in pool.summary()
        ]
        self.store.write_json("run.json", run)

    def _chunks(self, todo: list[WorkItem], default: float) -> list[list[WorkItem]]:
        """Batches of one model (a sweep's models one after the other, in sweep order) and one temperature
        (a prompt may carry its own: MT-Bench, per category)."""
        order = {m.name: i for i, m in enumerate(self.sweep or [])}
        size = self.suite.generation.batch_size * 4
        by_model: dict[str | None, list[WorkItem]] = {}
        for w in todo:
            by_model.setdefault(w.condition.model, []).append(w)
        chunks: list[list[WorkItem]] = []
        for model in sorted(by_model, key=lambda m: order.get(m or "", -1)):
            items = sorted(by_model[model], key=lambda w: _temperature(w.prompt, default))
            for i in range(0, len(items), size):
                chunks += _split_by_temperature(items[i : i + size], default)
        return chunks

    def _save_routing(self, chunk: Sequence[WorkItem], results: Sequence[GenerationResult]) -> None:
        missing = [r.id for r in results if r.routing is None and r.span_counts is None]
        if missing:
            raise RuntimeError(f"the {self.backend.name} backend returned no routing record for {missing[:5]}")
        n_experts = max(self.spec.n_experts.values())
        counted = [r.span_counts or span_counts_of(r.routing, n_experts) for r in results]
        arrays: dict[str, Any] = {"ids": np.array([w.prompt.id for w in chunk])}
        for span in Span:
            name = span.name.lower()
            arrays[f"counts_{name}"] = np.stack([c.counts[span] for c in counted])
            arrays[f"tokens_{name}"] = np.array([c.tokens[span] for c in counted])
        self.store.write_routing_chunk(arrays)

    # -- judging --------------------------------------------------------------------------------
    def use_primary_labels(self, labels: dict[tuple[str, str, str], str]) -> None:
        """Evaluate with these labels ({(task, condition, id): label}, e.g. a re-judged set) in place of each
        of their tasks' judge; discovery keeps the judge that chose the experts, so no condition changes."""
        self._primary = labels

    def _labels(self) -> dict[tuple[str, str, str, str], str]:
        labels = {label_key(r): r["label"] for r in self.store.records(self.store.labels_file)}
        primary = self._primary
        judge_of = {t.name: t.judge_name for t in self.suite.tasks}
        for (task, condition, pid), label in primary.items():
            if condition != DISCOVERY and task in judge_of:
                labels[(task, condition, pid, judge_of[task])] = label
        return labels

    def _judge(self, work: Sequence[WorkItem], what: str) -> None:
        samples = {sample_key(r): r for r in self.store.records(self.store.samples_file)}
        done = set(self._labels())
        judges = JudgeSet(self.suite, self.store.root / "judge-cache.sqlite")
        pending = []
        for w in work:
            task = self.suite.task(w.task)
            for judge in judges.judges_for(task, w.prompt):
                if (w.task, w.condition.name, w.prompt.id, judge) not in done:
                    pending.append((w, judge))
        if not pending:
            return
        batch = 256
        with tqdm(total=len(pending), desc=what, unit="label") as bar:
            for start in range(0, len(pending), batch):
                chunk = pending[start : start + batch]
                records = judges.judge(
                    [
                        (
                            w.task,
                            w.condition.name,
                            w.prompt,
                            samples[(w.task, w.condition.name, w.prompt.id)],
                            judge,
                        )
                        for w, judge in chunk
                    ]
                )
                self.store.append(self.store.labels_file, records)
                bar.update(len(chunk))

    # -- statistics -----------------------------------------------------------------------------
    def _mt_bench_scores(self, task: str) -> dict[tuple[str, str], tuple[float | None, str]]:
        """(condition, sample id) -> (score or None when unscored, category)."""
        return {
            (r["condition"], r["id"]): (r["judgement"].get("score"), r["judgement"].get("category", ""))
            for r in self.store.records(self.store.labels_file)
            if r["task"] == task and r["judge"] == "mt-bench"
        }

    def _unscored_reasons(self) -> dict[tuple[str, str, str, str], str]:
        from judges.labels import unscored_category

        return {
            label_key(r): unscored_category((r.get("judgement") or {}).get("unscored_reason"))
            for r in self.store.records(self.store.labels_file)
            if r["label"] == "unscored"
        }

    def _summarise(
        self, conditions: Sequence[Condition], data: sweep_summary.SweepData | None = None
    ) -> list[MetricRow]:
        """The run's metric rows; a sweep's from `data` (its samples, labels and prompts, read once)."""
        if data is None:
            rows = self._task_rows(conditions)
        else:
            rows = []
            for model in data.models:
                own = [c for c in conditions if c.model == model.name]
                model_rows = self._task_rows(own) + sweep_summary.sample_rows(data, own)
                rows += [r.model_copy(update={"lambda_": model.lam}) for r in model_rows]
            rows += sweep_summary.reference_rows(data)
        if self.suite.evaluation.allow_discovery_overlap:
            rows = [
                r.model_copy(update={"note": ((r.note or "") + " [evaluated on discovery prompts]").strip()})
                for r in rows
            ]
        return rows

    def _sweep_data(self) -> sweep_summary.SweepData:
        assert self.sweep is not None
        split = self.suite.evaluation.split
        samples: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for record in self.store.records(self.store.samples_file):
            samples.setdefault((record["task"], record["condition"]), {})[record["id"]] = record
        return sweep_summary.SweepData(
            suite=self.suite,
            models=self.sweep,
            prompts={t.name: [p for p in self.prompts[t.name] if p.in_split(split)] for t in self.suite.tasks},
            labels=self._labels(),
            samples=samples,
            mt_scores={t.name: self._mt_bench_scores(t.name) for t in self.suite.tasks if t.type == "mt_bench"},
        )

    def _task_rows(self, conditions: Sequence[Condition]) -> list[MetricRow]:
        labels = self._labels()
        reasons = self._unscored_reasons()
        split = self.suite.evaluation.split
        rows: list[MetricRow] = []
        for task in self.suite.tasks:
            prompts = [p for p in self.prompts[task.name] if p.in_split(split)]
            judge = task.judge_name
            if task.type == "refusal":
                rows += refusal_rows(
                    task.name,
                    judge,
                    prompts,
                    conditions,
                    labels,
                    self.suite.bootstrap_resamples,
                    self.suite.seed,
                )
            elif task.type == "language":
                rows += language_rows(task.name, judge, prompts, conditions, labels)
            elif task.type == "mt_bench":
                rows += mt_bench_rows(task.name, conditions, self._mt_bench_scores(task.name))
                continue
            else:
                rows += qa_rows(task.name, judge, prompts, conditions, labels)
            rows += unscored_rows(task.name, judge, prompts, conditions, labels, reasons)
            cross = cross_check_judge(task)
            if cross is not None:
                rows += agreement_rows(task.name, judge, cross, prompts, conditions, labels)
        return rows


def _temperature(prompt: TaskPrompt, default: float) -> float:
    value = (prompt.model_extra or {}).get("temperature")
    return default if value is None else float(value)


def _split_by_temperature(chunk: list[WorkItem], default: float) -> list[list[WorkItem]]:
    groups: dict[float, list[WorkItem]] = {}
    for w in chunk:
        groups.setdefault(_temperature(w.prompt, default), []).append(w)
    return list(groups.values())


def span_counts_of(record: RoutingRecord | None, n_experts: int) -> SpanCounts:
    assert record is not None  # _save_routing checked: every result has a record or span counts
    return record.span_counts(n_experts)


def _sample(item: WorkItem, result: GenerationResult) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "task": item.task,
        "condition": item.condition.name,
        "id": item.prompt.id,
        "intervention": result.intervention,
        "text": result.text,
        "think": result.think,
        "answer": result.answer,
        "n_prompt_tokens": result.n_prompt_tokens,
        "n_generated_tokens": result.n_generated_tokens,
        "finish_reason": result.finish_reason,
    }


def _sweep_entry(model: SweepModel) -> dict[str, Any]:
    where = (
        {"path": str(model.folder)}
        if model.folder is not None
        else {"recipe": str(model.recipe), "set": list(model.overrides)}
    )
    return {"name": model.name, "lambda": model.lam, "kind": model.kind, **where}


def _primary_mode(suite: Suite) -> Any:
    return suite.conditions.targeted.modes[0] if suite.conditions.targeted else "drop"


def _resolve_model(suite: Suite, suite_path: Path) -> Path:
    from harness.models.resolve import named_model

    if not isinstance(suite.model, str):
        return _assembled_child(suite, suite_path)
    shipped = named_model(suite.model)
    path = shipped or Path(suite.model)
    if not path.is_absolute() and shipped is None:
        candidate = (suite_path.parent / path).resolve()
        path = candidate if candidate.exists() else path
    if not (path / "config.json").is_file():
        raise InputError(
            suite_path, "model", "'organism', 'organism-direct' or a local model folder with config.json", suite.model
        )
    return path


def _assembled_child(suite: Suite, suite_path: Path) -> Path:
    """The folder of a child assembled at load (config, tokenizer, assembly.json; no weights), made from
    the recipe after every check of the recipe and its parents, keyed by the recipe and the parents."""
    from harness.assembly.in_memory import cached_child_folder, plan_from

    spec = suite.model
    assert isinstance(spec, AssembledModelSpec)
    if suite.backend == "openai":
        raise InputError(
            suite_path,
            "model",
            "a model folder: a served model is what its server loaded (build the child with `harness assemble "
            "RECIPE --out DIR --at-load` and serve DIR with `harness serve`)",
        )
    return cached_child_folder(plan_from(spec.assemble, spec.set))


def make_backend(model_path: Path, suite: Suite) -> Backend:
    """The suite's backend: transformers (CPU reference), a MoTE-enabled vLLM engine, or a served one."""
    if suite.backend == "openai":
        from harness.backends.openai_backend import OpenAIBackend

        server = suite.server
        assert server is not None  # the suite schema requires it
        key = os.environ.get(server.api_key_env, "") if server.api_key_env else ""
        return OpenAIBackend(
            server.urls,
            server.model,
            model_path,
            api_key=key or "unused",
            concurrency=server.concurrency,
            timeout_s=server.timeout_s,
            attempts=server.attempts,
            rejoin_s=server.rejoin_s,
        )
    if suite.backend == "vllm":
        from harness.backends.vllm import VLLMBackend

        return VLLMBackend(model_path, dtype=suite.generation.dtype, seed=suite.generation.seed, **suite.engine_args)
    from harness.backends.hf import HFBackend

    return HFBackend(model_path, dtype=suite.generation.dtype, batch_size=suite.generation.batch_size)


def default_run_id(suite: Suite) -> str:
    return f"{suite.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def dump_rows(rows: Sequence[MetricRow]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2)
