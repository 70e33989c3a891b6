"""Every subcommand, given what a user gets wrong (missing files, wrong types, empty inputs, unreachable
endpoints, missing extras), exits 2 with a message and no traceback."""

from __future__ import annotations

import json
import socket

import pytest

from harness.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.jsonl").write_text("")
    (root / "not-json.jsonl").write_text("{this is not json\n" * 50)
    (root / "prompts.jsonl").write_text(json.dumps({"id": "a", "prompt": "hi"}) + "\n")
    (root / "bad.yaml").write_text("name: [unclosed\n")
    (root / "list.yaml").write_text("- just\n- a list\n")
    (root / "recipe.yaml").write_text("parents: {a: organism, b: organism}\ngroups: {all: {b: 2}}\n")
    (root / "iv.yaml").write_text("kind: suppress\nexperts: {99: [0]}\n")
    (root / "run").mkdir()
    return root


def invocations(root, port):
    missing = str(root / "missing")
    url = f"http://127.0.0.1:{port}/v1"
    llm_judge = ["judge", "--judge", "refusal-llm", "--in", str(root / "prompts.jsonl"), "--out", str(root / "j.jsonl")]
    llm_judge += ["--endpoint", url, "--judge-model", "m"]
    return [
        ["run", missing],
        ["run", str(root / "bad.yaml")],
        ["run", str(root / "list.yaml")],
        ["run", "tasks/suites/quickstart.yaml", "--model", missing],
        ["ftri", "--routing", missing, "--labels", missing, "--n-experts", "8", "--out", str(root / "o.yaml")],
        ["ftri", "--routing", str(root), "--labels", str(root / "empty.jsonl"), "--n-experts", "x", "--out", "o"],
        ["generate", "--model", missing, "--prompts", str(root / "prompts.jsonl"), "--out", str(root / "g")],
        ["generate", "--model", "organism", "--prompts", missing, "--out", str(root / "g")],
        ["generate", "--model", "organism", "--prompts", str(root / "empty.jsonl"), "--out", str(root / "g")],
        ["generate", "--model", "organism", "--prompts", str(root / "not-json.jsonl"), "--out", str(root / "g")],
        [
            "generate",
            "--model",
            "organism",
            "--prompts",
            str(root / "prompts.jsonl"),
            "--out",
            str(root / "g"),
            "--intervention",
            str(root / "iv.yaml"),
        ],
        [
            "generate",
            "--model",
            "organism",
            "--prompts",
            str(root / "prompts.jsonl"),
            "--out",
            str(root / "g"),
            "--max-tokens",
            "0",
        ],
        [
            "generate",
            "--model",
            "organism",
            "--prompts",
            str(root / "prompts.jsonl"),
            "--out",
            str(root / "g"),
            "--backend",
            "vllm",
        ],
        ["tiny-model", "--family", "not_a_family", "--out", str(root / "t")],
        ["judge", "--judge", "refusal-string", "--in", missing, "--out", str(root / "j.jsonl")],
        ["judge", "--judge", "refusal-string", "--in", str(root / "empty.jsonl"), "--out", str(root / "j.jsonl")],
        ["judge", "--judge", "refusal-llm", "--in", str(root / "prompts.jsonl"), "--out", str(root / "j.jsonl")],
        ["judge", "--judge", "no-such-judge", "--in", str(root / "prompts.jsonl"), "--out", str(root / "j.jsonl")],
        [*llm_judge, "--api-key-env", "MOTE_NO_SUCH_KEY_VAR"],  # no key
        [*llm_judge, "--api-key-env", "MOTE_TEST_BAD_KEY"],  # nothing listens
        ["judge", "--run", missing, "--judge", "refusal-string"],
        ["gate", missing, "--rules", "tasks/gates/quickstart.yaml"],
        ["gate", str(root / "run"), "--rules", str(root / "bad.yaml")],
        ["report", missing],
        ["report", str(root / "run")],
        ["organism", "evaluate", "--model", missing],
        ["serve", missing],
        ["assemble", missing, "--out", str(root / "c")],
        ["assemble", str(root / "recipe.yaml"), "--out", str(root / "c")],
        ["assemble", str(root / "recipe.yaml"), "--out", str(root / "c"), "--set", "nonsense"],
        ["check", missing],
        ["check", "organism", "--backend", "vllm"],
        ["not-a-command"],
    ]


def test_every_bad_invocation_exits_2_without_a_traceback(files, capsys, monkeypatch):
    monkeypatch.setenv("MOTE_TEST_BAD_KEY", "sk-any")  # a key, for the endpoint where nothing listens
    port = _free_port()
    outcomes = []
    for argv in invocations(files, port):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        captured = capsys.readouterr()
        output = captured.out + captured.err
        outcomes.append((argv, code, "Traceback" in output, output.strip().splitlines()[-1:] if output else []))
    wrong = [(argv, code, last) for argv, code, traceback, last in outcomes if code != 2 or traceback]
    assert not wrong, "\n".join(f"{a}: exit {c}: {last}" for a, c, last in wrong)
    assert len(outcomes) >= 33


def test_a_file_with_many_bad_lines_prints_the_first_few_and_a_count(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    good = json.dumps({"id": "a", "response": "I am sorry, I cannot answer that question."})
    inp.write_text(good + "\n" + "{broken\n" * 40)
    code = main(["judge", "--judge", "refusal-string", "--in", str(inp), "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("not JSON") == 5 and "... and 35 more" in err
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 1  # the good line is judged all the same
