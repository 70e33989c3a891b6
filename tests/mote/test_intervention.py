from __future__ import annotations

import json

import pytest

from harness.common.errors import InputError
from harness.mote import ExpertSet, Intervention, load_intervention, save_intervention


def test_yaml_file_in_the_documented_format_loads(tmp_path):
    path = tmp_path / "iv.yaml"
    path.write_text("kind: suppress\nmode: mask\nexperts: {3: [5, 17], 7: [2]}\n")
    iv = load_intervention(path)
    assert iv.kind == "suppress" and iv.mode == "mask"
    assert iv.experts == ExpertSet(((3, 5), (3, 17), (7, 2)))


def test_json_file_with_string_layer_keys_loads(tmp_path):
    path = tmp_path / "iv.json"
    path.write_text(json.dumps({"kind": "stimulate", "experts": {"2": [1]}}))
    assert load_intervention(path).experts.to_mapping() == {2: [1]}


def test_suppress_defaults_to_drop_mode():
    assert Intervention.from_data({"kind": "suppress", "experts": {0: [1]}}).mode == "drop"


def test_fingerprint_is_stable_and_ignores_labels():
    a = Intervention.suppress({3: [17, 5], 7: [2]})
    b = Intervention(kind="suppress", mode="drop", experts=ExpertSet(((7, 2), (3, 5), (3, 17))), name="x", seed=4)
    assert a.fingerprint() == b.fingerprint() == "suppress-drop-" + a.fingerprint().split("-")[-1]
    assert len(a.fingerprint().split("-")[-1]) == 12
    assert a.fingerprint() != Intervention.suppress({3: [5, 17], 7: [2]}, mode="mask").fingerprint()
    assert Intervention.none().fingerprint() == "none"


def test_fingerprint_is_a_fixed_value_across_sessions():
    # A change here breaks every cache key and stored record: bump deliberately, never by accident.
    assert Intervention.suppress({3: [5, 17], 7: [2]}).fingerprint() == "suppress-drop-48ffb781c439"


def test_save_then_load_round_trips(tmp_path):
    iv = Intervention(kind="suppress", mode="mask", experts=ExpertSet(((1, 2),)), name="t", provenance={"from": "ftri"})
    for suffix in (".yaml", ".json"):
        back = load_intervention(save_intervention(iv, tmp_path / f"iv{suffix}"))
        assert back == iv


@pytest.mark.parametrize(
    ("content", "field", "expected"),
    [
        ("kind: supress\nexperts: {1: [1]}\n", "kind", "one of"),
        ("kind: suppress\nmode: cut\nexperts: {1: [1]}\n", "mode", "one of"),
        ("kind: stimulate\nmode: drop\nexperts: {1: [1]}\n", "mode", "suppress' only"),
        ("kind: suppress\nexperts: {a: [1]}\n", "experts", "integer"),
        ("kind: suppress\nexperts: {1: []}\n", "experts", "non-empty"),
        ("kind: suppress\n", "experts", "at least one expert"),
        ("kind: none\nexperts: {1: [2]}\n", "experts", "no experts for kind 'none'"),
        ("kind: suppress\nexperts: {1: [1]}\nlayers: 3\n", "layers", "no such key"),
        ("- just a list\n", "<top level>", "mapping"),
        ("kind: [unclosed\n", "<file>", "valid YAML"),
    ],
)
def test_malformed_file_error_names_file_field_and_expectation(tmp_path, content, field, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_intervention(path)
    assert info.value.source == str(path)
    assert info.value.field == field
    assert expected in str(info.value)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="readable"):
        load_intervention(tmp_path / "nope.yaml")
