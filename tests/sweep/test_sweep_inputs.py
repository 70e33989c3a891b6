"""A sweep suite that cannot run is refused before any model loads: exit 2, naming the suite, the field
and the reason (an empty or out-of-range lambda list, parents that cannot be assembled, a sweep with a
model or an fTRI step, a served backend, a listed folder that is no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.models.tiny import save_tiny_model

TASKS = [{"name": "generic", "type": "qa", "source": "organism/qa", "limit": 2}]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep-inputs")
    (root / "pair.yaml").write_text("parents: {organism: organism, direct: organism-direct}\n")
    other = save_tiny_model("qwen3_moe", root / "qwen3", seed=0)
    (root / "mismatch.yaml").write_text(f"parents: {{organism: organism, other: {other}}}\n")
    (root / "three.yaml").write_text(
        "parents: {organism: organism, direct: organism-direct, again: organism-direct}\n"
        "groups: {attention: {again: 0.8}}\n"
    )
    (root / "unreadable.yaml").write_text("parents: {organism: organism\n")
    (root / "out-of-range.yaml").write_text(
        "parents: {organism: organism, direct: organism-direct}\ngroups: {attention: {direct: 2}}\n"
    )
    return root


def _suite(root: Path, name: str, **fields: Any) -> Path:
    suite: dict[str, Any] = {
        "name": name,
        "assembly": {"recipe": "pair.yaml", "parent": "direct", "groups": ["all"], "lambdas": [0, 1]},
        "tasks": TASKS,
        "conditions": {"baseline": True, "targeted": None, "random": None},
    }
    suite.update(fields)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in suite.items() if v is not None}))
    return path


def _assembly(**changes: Any) -> dict[str, Any]:
    return {"recipe": "pair.yaml", "parent": "direct", "groups": ["all"], "lambdas": [0, 1], **changes}


CASES = [
    ("empty-lambdas", {"assembly": _assembly(lambdas=[])}, "assembly.lambdas"),
    ("lambda-out-of-range", {"assembly": _assembly(lambdas=[0, 1.5])}, "assembly.lambdas"),
    ("repeated-lambda", {"assembly": _assembly(lambdas=[0.5, 0.5])}, "assembly.lambdas"),
    ("unknown-parent", {"assembly": _assembly(parent="r1")}, "assembly.parent"),
    ("base-as-parent", {"assembly": _assembly(parent="organism")}, "assembly.parent"),
    ("unknown-group", {"assembly": _assembly(groups=["experts"])}, "assembly.groups"),
    ("parents-differ", {"assembly": _assembly(recipe="mismatch.yaml", parent="other")}, "parents.other"),
    (
        "lambdas-above-one",
        {"assembly": _assembly(recipe="three.yaml", groups=["attention"], lambdas=[0, 0.5])},
        "assembly",
    ),
    ("model-and-sweep", {"model": "organism"}, "model"),
    ("ftri-in-sweep", {"ftri": {"task": "generic"}}, "ftri"),
    ("served-sweep", {"backend": "openai", "server": {"base_url": "http://127.0.0.1:9", "model": "m"}}, "backend"),
    ("not-a-model", {"assembly": None, "models": ["organism", "nowhere"]}, "models.1"),
    ("same-names", {"assembly": None, "models": ["organism", {"path": "organism"}]}, "models"),
]


def _refused(root: Path, name: str, fields: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the suite; it must exit 2 with a message (returned) and write no sample."""
    suite = _suite(root, name, **fields)
    assert main(["run", str(suite), "--out", str(root / "results"), "--run-id", name]) == 2
    err = capsys.readouterr().err
    assert f"{name}.yaml: field '" in err, err  # the suite's own file is the error's source
    assert "Traceback" not in err
    assert not (root / "results" / name / "samples.jsonl").exists()
    return err


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.run.runner as runner

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "make_backend", refuse)


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(("name", "fields", "field"), CASES, ids=[c[0] for c in CASES])
def test_a_sweep_that_cannot_run_exits_2_naming_the_suite_and_the_field(
    root: Path, name: str, fields: dict[str, Any], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(root, name, fields, capsys)
    assert f"field '{field}'" in err, err


RECIPES = [
    ("missing-recipe", "nowhere.yaml", "field '<file>': expected a readable recipe YAML"),
    ("unreadable-recipe", "unreadable.yaml", "field '<file>': expected valid YAML"),
    ("recipe-lambda-out-of-range", "out-of-range.yaml", "a lambda in [0, 1] (got 2"),
]


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(("name", "recipe", "reason"), RECIPES, ids=[c[0] for c in RECIPES])
def test_a_recipe_that_cannot_be_read_is_named_as_the_suites_field_with_its_own_reason(
    root: Path, name: str, recipe: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(root, name, {"assembly": _assembly(recipe=recipe)}, capsys)
    assert f"{name}.yaml: field 'assembly.recipe'" in err, err
    assert f"{recipe}: " in err and reason in err, err
