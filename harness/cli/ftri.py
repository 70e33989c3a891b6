"""`harness ftri`: fTRI on routing you recorded yourself (`harness generate --record-routing`) and
labels you judged yourself (`harness judge`): rank the experts that tell the target labels apart
from the others, and write the intervention that suppresses the top k.

Writes --out (the intervention file, as `harness run` writes experts.yaml, with provenance) and,
beside it, `<stem>.ftri.json` (the ranking report, as `harness run` writes ftri.json), and prints
the top k. Defaults are those of a suite's `ftri` step. The model's MoE shape comes from --model
(its config alone; no weights load) or, without a model, from the records and --n-experts.

Each labelled id of the target or other class needs DIR/routing/<id>.npz; `unscored` labels, and
labels in neither class when --other is given, are counted and reported, not used. Every input is
checked before any routing is counted.
"""

from __future__ import annotations

import argparse
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.analysis import ftri, ftri_files
from harness.common.errors import InputError
from harness.common.jsonl import objects_with_ids
from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention, load_intervention
from harness.mote.records import RoutingRecord
from harness.mote.spec import ModelSpec
from harness.suite.schema import FtriSpec, Suite

DEFAULTS = FtriSpec(task="-")  # a suite's fTRI defaults, the command line's too
DEFAULT_SEED: int = Suite.model_fields["seed"].default
OPTION = {"k": "--k", "bootstrap": "--bootstrap", "always_on_threshold": "--always-on-threshold"}
SHOW_MISSING = 5  # ids named when labelled prompts have no routing record


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ftri", help="rank experts from recorded routing and judge labels; write the top-k intervention"
    )
    p.add_argument(
        "--routing", required=True, type=Path, metavar="DIR", help="DIR/routing of harness generate --record-routing"
    )
    p.add_argument(
        "--labels", required=True, type=Path, metavar="FILE", help="JSONL with id and label per line (harness judge)"
    )
    p.add_argument(
        "--target",
        action="append",
        metavar="LABEL",
        help=f"label of the target class (repeatable; default {' '.join(DEFAULTS.target)})",
    )
    p.add_argument(
        "--other",
        action="append",
        metavar="LABEL",
        help="label of the other class (repeatable; default: every other scored label)",
    )
    p.add_argument("--span", choices=tuple(ftri_files.SPAN_PARTS), default=DEFAULTS.span, help="tokens counted")
    p.add_argument("--score", choices=ftri.SCORES, default=DEFAULTS.score)
    p.add_argument("--k", type=int, default=DEFAULTS.k, metavar="K", help="experts in the emitted intervention")
    p.add_argument("--mode", choices=("drop", "mask"), default="drop", help="suppression mode of the intervention")
    p.add_argument("--exclude", type=Path, metavar="FILE", help="intervention file whose experts are never picked")
    p.add_argument(
        "--always-on-threshold",
        default=str(DEFAULTS.always_on_threshold),
        metavar="X",
        help="exclude experts routed for at least this share of every class's tokens; 'none' to keep them",
    )
    p.add_argument(
        "--bootstrap", type=int, default=DEFAULTS.bootstrap, metavar="N", help="resamples for top-k stability (0: none)"
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S", help="bootstrap seed")
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument(
        "--model", metavar="PATH", help="the model that generated the routing: local folder or 'organism'"
    )
    shape.add_argument(
        "--n-experts", type=int, metavar="N", help="routed experts per layer, when the model is not at hand"
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="intervention file to write (.yaml, .yml or .json)"
    )
    p.set_defaults(func=run)


@dataclass(frozen=True)
class FtriInputs:
    """Every input of one `harness ftri` run, checked: nothing is counted until all of it holds."""

    options: FtriSpec
    routing: Path  # the folder of routing records
    classes: dict[str, str]  # id -> target / other, the ids that are counted
    records: dict[str, Path]  # id -> its routing record, for the ids in classes
    unscored: int  # labelled unscored: counted and reported, not used
    neither: Counter[str]  # labels in neither class (only when --other is given), by label
    unlabelled: int  # routing records without a label
    exclude: ExpertSet
    spec: ModelSpec


def run(args: argparse.Namespace) -> int:
    """Check every input, rank the experts, then write the intervention and the report."""
    inputs = read_inputs(args)
    result = rank(inputs, args.seed)
    setup = ftri_files.FtriSetup(
        span=inputs.options.span,
        k=inputs.options.k,
        target_labels=inputs.options.target,
        other_labels=inputs.options.other,
        mode=args.mode,
    )
    report_path = write_outputs(args, inputs, result, setup)
    _print(result, setup, inputs.unscored, inputs.neither, inputs.unlabelled, inputs.exclude)
    print(f"wrote {args.out} and {report_path}")
    return 0


def read_inputs(args: argparse.Namespace) -> FtriInputs:
    """Every input, cheapest check first, so a mistake costs no routing counting."""
    options = _options(args)
    if args.out.suffix not in (".yaml", ".yml", ".json"):
        raise InputError("--out", "out", "an intervention file name ending .yaml, .yml or .json", str(args.out))
    if args.n_experts is not None and args.n_experts < 1:
        raise InputError("--n-experts", "n_experts", "an integer >= 1", args.n_experts)
    record_ids = _record_ids(args.routing)
    labels = read_labels(args.labels)
    exclude = load_intervention(args.exclude).experts if args.exclude else ExpertSet()
    classes, unscored, neither = _split_classes(labels, options)
    _check_classes(args.labels, labels, classes, options)
    records = _record_paths(args.routing, args.labels, classes)
    spec = _model_spec(args, records[next(iter(classes))])
    if exclude:
        spec.check(Intervention.suppress(exclude), args.exclude)
    return FtriInputs(
        options=options,
        routing=args.routing,
        classes=classes,
        records=records,
        unscored=unscored,
        neither=neither,
        unlabelled=len(record_ids - set(labels)),
        exclude=exclude,
        spec=spec,
    )


def _split_classes(labels: dict[str, str], options: FtriSpec) -> tuple[dict[str, str], int, Counter[str]]:
    """id -> target / other; unscored ids and labels in neither class are counted, not dropped silently."""
    classes: dict[str, str] = {}
    unscored, neither = 0, Counter[str]()
    for pid, label in labels.items():
        if label == ftri_files.UNSCORED:
            unscored += 1
            continue
        cls = ftri_files.classify(label, options.target, options.other)
        if cls is None:
            neither[label] += 1
        else:
            classes[pid] = cls
    return classes, unscored, neither


def _record_paths(routing: Path, labels_path: Path, classes: dict[str, str]) -> dict[str, Path]:
    """The routing record of every counted id (named as harness generate names them); all must exist."""
    records = {pid: routing / f"{pid}.npz" for pid in classes}
    missing = [pid for pid, path in records.items() if not path.is_file()]
    if missing:
        raise InputError(
            labels_path,
            "id",
            f"a routing record {routing}/<id>.npz for every labelled id of the two classes "
            f"({len(missing)} of {len(classes)} have none; first {min(len(missing), SHOW_MISSING)} shown)",
            missing[:SHOW_MISSING],
        )
    return records


def rank(inputs: FtriInputs, seed: int) -> ftri.FtriResult:
    """Count each record's span tokens per expert and rank the experts (with bootstrap stability)."""
    options, spec = inputs.options, inputs.spec
    n_experts = max(spec.n_experts.values())
    prompts = []
    for pid, label_class in inputs.classes.items():
        record = _load_record(inputs.records[pid], spec)
        counts, tokens = ftri_files.record_counts(record, n_experts, options.span)
        prompts.append(ftri.PromptCounts(counts, tokens, label_class))
    _check_tokens(inputs.routing, prompts, options.span)
    return ftri.rank_with_stability(
        prompts,
        list(spec.moe_layers),
        ftri_files.TARGET,
        ftri_files.OTHER,
        options.k,
        options.score,
        inputs.exclude,
        options.always_on_threshold,
        bootstrap=options.bootstrap,
        seed=seed,
    )


def write_outputs(
    args: argparse.Namespace, inputs: FtriInputs, result: ftri.FtriResult, setup: ftri_files.FtriSetup
) -> Path:
    """Write the intervention (--out) and the ranking report beside it; returns the report's path."""
    report_path = args.out.with_name(f"{args.out.stem}.ftri.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ftri_files.write_ftri(
        result,
        setup,
        args.out,
        report_path,
        unscored=inputs.unscored,
        source={"routing": str(args.routing), "labels": str(args.labels)},
        extra={
            "model": args.model,
            "not_used": {"neither_class": sum(inputs.neither.values()), "records_without_label": inputs.unlabelled},
        },
    )
    return report_path


def read_labels(path: Path) -> dict[str, str]:
    """id -> label from a JSONL of judge output lines; a bad line is an InputError naming it."""
    if not path.is_file():
        raise InputError(path, "--labels", "an existing JSONL file of labels (harness judge --out)")
    out: dict[str, str] = {}
    for where, rid, line in objects_with_ids(path, path.read_text(encoding="utf-8").splitlines()):
        label = line.get("label")
        if not isinstance(label, str) or not label:
            raise InputError(path, f"{where}: label", "a label string (as harness judge writes)", label)
        out[rid] = label
    if not out:
        raise InputError(path, "<file>", "at least one line with id and label")
    return out


def _options(args: argparse.Namespace) -> FtriSpec:
    """The fTRI options, validated as a suite's ftri step is."""
    threshold: Any = args.always_on_threshold
    if isinstance(threshold, str) and threshold.strip().lower() in ("none", "off"):
        threshold = None
    try:
        return FtriSpec(
            task="-",
            target=args.target or DEFAULTS.target,
            other=args.other,
            span=args.span,
            score=args.score,
            k=args.k,
            always_on_threshold=threshold,
            bootstrap=args.bootstrap,
        )
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "options"
        option = OPTION.get(name, f"--{name.replace('_', '-')}")
        expected = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(option, name, expected, first.get("input")) from None


def _record_ids(routing: Path) -> set[str]:
    """Ids of the routing records in `routing`."""
    expected = "a folder of <id>.npz routing records (harness generate --record-routing writes OUT/routing)"
    if not routing.is_dir():
        raise InputError(routing, "--routing", expected, "no such folder")
    ids = {p.stem for p in routing.glob("*.npz")}
    if not ids:
        raise InputError(routing, "--routing", expected, "no .npz files")
    return ids


def _check_classes(path: Path, labels: dict[str, str], classes: dict[str, str], options: FtriSpec) -> None:
    sizes = Counter(classes.values())
    if sizes[ftri_files.TARGET] and sizes[ftri_files.OTHER]:
        return
    other = options.other or ftri_files.OTHER_DEFAULT
    counts = ", ".join(f"{label} {n}" for label, n in sorted(Counter(labels.values()).items()))
    raise InputError(
        path,
        "label",
        f"lines of both classes, target {options.target} and other {other} "
        f"(target {sizes[ftri_files.TARGET]}, other {sizes[ftri_files.OTHER]})",
        counts,
    )


def _model_spec(args: argparse.Namespace, first_record: Path) -> ModelSpec:
    if args.model is not None:
        from harness.backends.hf_discovery import inspect_model
        from harness.models.resolve import resolve_model

        return inspect_model(resolve_model(args.model))
    record = _read_record(first_record)
    layers = tuple(int(x) for x in record.layers)
    return ModelSpec(
        family="routing-record",
        n_layers=max(layers) + 1,
        moe_layers=layers,
        n_experts={layer: args.n_experts for layer in layers},
        top_k=int(record.topk_ids.shape[2]),
    )


def _read_record(path: Path) -> RoutingRecord:
    try:
        return RoutingRecord.load(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(
            path, "<file>", "a routing record (topk_ids, topk_weights, layers, span) from harness generate", str(err)
        ) from None


def _load_record(path: Path, spec: ModelSpec) -> RoutingRecord:
    """The record, checked against the model's MoE layers and expert counts."""
    record = _read_record(path)
    layers = [int(x) for x in record.layers]
    if layers != list(spec.moe_layers):
        raise InputError(path, "layers", f"the MoE layers of the {spec.family} model, {list(spec.moe_layers)}", layers)
    for i, layer in enumerate(layers):
        ids = record.topk_ids[:, i]
        if ids.size and (int(ids.max()) >= spec.n_experts[layer] or int(ids.min()) < -1):
            raise InputError(
                path,
                f"topk_ids (layer {layer})",
                f"expert ids in 0..{spec.n_experts[layer] - 1}, or -1 for a dropped slot",
                [int(ids.min()), int(ids.max())],
            )
    return record


def _check_tokens(routing: Path, prompts: Sequence[ftri.PromptCounts], span: str) -> None:
    with_tokens = Counter(p.label for p in prompts if p.tokens > 0)
    if with_tokens[ftri_files.TARGET] and with_tokens[ftri_files.OTHER]:
        return
    raise InputError(
        routing,
        "span",
        f"tokens of span {span!r} in the records of both classes (try another --span)",
        f"target {with_tokens[ftri_files.TARGET]}, other {with_tokens[ftri_files.OTHER]} prompts with such tokens",
    )


def _print(
    result: ftri.FtriResult,
    setup: ftri_files.FtriSetup,
    unscored: int,
    neither: Counter[str],
    unlabelled: int,
    exclude: ExpertSet,
) -> None:
    from rich.console import Console
    from rich.table import Table

    other = " ".join(setup.other_labels) if setup.other_labels else "every other scored label"
    table = Table(
        title=f"fTRI top {setup.k} ({result.score}, {setup.span} span): {' '.join(setup.target_labels)} vs {other}"
    )
    for name in ("rank", "layer", "expert", "score", "share target", "share other"):
        table.add_column(name, justify="right")
    for row in result.rows(setup.k):
        table.add_row(
            str(row.rank),
            str(row.layer),
            str(row.expert),
            f"{row.score:.4f}",
            f"{row.share_target:.3f}",
            f"{row.share_other:.3f}",
        )
    console = Console()
    console.print(table)
    n, tokens = result.n_prompts, result.n_tokens
    console.print(
        f"prompts: target {n[ftri_files.TARGET]} ({tokens[ftri_files.TARGET]} tokens), "
        f"other {n[ftri_files.OTHER]} ({tokens[ftri_files.OTHER]} tokens)",
        highlight=False,
    )
    not_used = [f"unscored {unscored}"]
    not_used += [f"{label} {count}" for label, count in sorted(neither.items())]
    not_used.append(f"routing records without a label {unlabelled}")
    console.print(f"counted, not used: {', '.join(not_used)}", highlight=False)
    always_on = len(result.excluded) - len(exclude)
    console.print(f"excluded: {len(exclude)} from --exclude, {always_on} always-on", highlight=False)
    if result.stability:
        s = result.stability
        console.print(
            f"top-{setup.k} stability over {int(s['n_resamples'])} bootstrap resamples: Jaccard mean "
            f"{s['jaccard_mean']:.2f}, 5th percentile {s['jaccard_p05']:.2f}, min {s['jaccard_min']:.2f}",
            highlight=False,
        )
