"""Family coverage: every routed-MoE model type of the installed transformers, supported or refused.

    python scripts/family_coverage.py [--families mixtral,dbrx] [--backends hf,vllm] [--out results/coverage]
                                      [--write-readme]

Writes OUT/coverage.json and OUT/coverage.md (family, router location, selection, backends, result).
With `--backends hf,vllm` (in an environment with vLLM: the `vllm` tox env), every family the
transformers backend supports is also run on vLLM (one engine each, ~1 minute on 2 cores) and a second
table is written (OUT/coverage_vllm.md). --write-readme puts the tables into README.md between their
markers. Exits 1 if a family fails its checks (a regression); families refused with a reason, or that
vLLM itself cannot load, do not fail the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", help="comma-separated model types (default: every routed-MoE type)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "coverage")
    parser.add_argument("--backends", default="hf", choices=("hf", "hf,vllm"), help="hf, or hf,vllm")
    parser.add_argument("--write-readme", action="store_true", help="replace the README's family table(s)")
    args = parser.parse_args(argv)

    import transformers
    from tqdm import tqdm

    from harness.cli import main as harness_main
    from harness.models import coverage

    transformers.logging.set_verbosity_error()
    families = args.families.split(",") if args.families else coverage.routed_moe_types()
    with tqdm(total=len(families), desc="families", unit="family") as bar:

        def progress(result: coverage.FamilyResult) -> None:
            bar.set_postfix_str(f"{result.family}: {result.status}")
            bar.update(1)

        results = coverage.run_coverage(families, harness_main, progress)
    vllm_results = _run_vllm(results, args) if args.backends == "hf,vllm" else []
    table = coverage.table_markdown(results, transformers.__version__, vllm_results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.md").write_text(table, encoding="utf-8")
    meta = {"transformers": transformers.__version__, "backends": args.backends.split(",")}
    (args.out / "coverage.json").write_text(coverage.as_json([*results, *vllm_results], meta), encoding="utf-8")
    if args.write_readme:
        coverage.replace_readme_table(REPO / "README.md", table)
    if vllm_results:
        import vllm

        vllm_table = coverage.vllm_table_markdown(vllm_results, vllm.__version__)
        (args.out / "coverage_vllm.md").write_text(vllm_table, encoding="utf-8")
        if args.write_readme:
            coverage.replace_readme_table(REPO / "README.md", vllm_table, coverage.VLLM_START, coverage.VLLM_END)
    results = [*results, *vllm_results]
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("supported", "refused", "failed")}
    print(f"{counts} -> {args.out / 'coverage.md'}")
    for r in failed:
        print(f"FAILED {r.family}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


def _run_vllm(results: list, args: argparse.Namespace) -> list:
    import tempfile

    from tqdm import tqdm

    from harness.models import coverage

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    families = [r.family for r in results if r.status == "supported"]
    archs = coverage.vllm_architectures()
    out = []
    with tempfile.TemporaryDirectory(prefix="mote-coverage-vllm-") as work, tqdm(
        total=len(families), desc="vLLM families", unit="family"
    ) as bar:
        for family in families:
            result = coverage.check_family_vllm(family, Path(work), archs)
            bar.set_postfix_str(f"{family}: {result.status}")
            bar.update(1)
            out.append(result)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
