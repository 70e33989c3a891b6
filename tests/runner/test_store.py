"""The run folder's routing chunks and model identity (pure file logic)."""

from __future__ import annotations

import json

import numpy as np

from harness.run import run_store as store
from harness.run.run_store import RunStore, model_identity


def _chunk(ids: list[str], value: int) -> dict[str, np.ndarray]:
    return {
        "ids": np.array(ids),
        "counts_prompt": np.full((len(ids), 2, 4), value),
        "tokens_prompt": np.full(len(ids), 3),
    }


def test_a_prompt_regenerated_after_a_crash_keeps_its_latest_routing_and_a_torn_chunk_is_ignored(tmp_path):
    run = RunStore(tmp_path)
    run.write_routing_chunk(_chunk(["a", "b"], 1))
    run.write_routing_chunk(_chunk(["b", "c"], 2))  # b: its sample line was lost, so it ran again
    (run.routing_dir / ".discovery-00002.npz.part").write_bytes(b"PK\x03\x04 cut off by kill -9")
    rows = run.routing_rows()
    assert sorted(rows) == ["a", "b", "c"]
    assert int(rows["a"]["counts_prompt"][0, 0]) == 1
    assert int(rows["b"]["counts_prompt"][0, 0]) == 2
    assert rows["c"]["counts_prompt"].shape == (2, 4) and int(rows["c"]["tokens_prompt"]) == 3
    assert sorted(p.name for p in run.routing_dir.glob(store.ROUTING_CHUNKS)) == [
        "discovery-00000.npz",
        "discovery-00001.npz",
    ]


def _model(folder, weights: bytes):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "x"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(weights) // 4], "data_offsets": [0, len(weights)]}})
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + weights)
    return folder


def test_model_identity_hashes_content_of_small_models_and_headers_of_huge_ones(tmp_path, monkeypatch):
    small_a = model_identity(_model(tmp_path / "a", b"\x00" * 16))
    small_b = model_identity(_model(tmp_path / "b", b"\x01" * 16))
    assert small_a["hashed"] == "content" and small_a["sha256"] != small_b["sha256"]
    monkeypatch.setattr(store, "FULL_HASH_MAX_BYTES", 8)
    huge_a, huge_b = model_identity(tmp_path / "a"), model_identity(tmp_path / "b")
    assert huge_a["hashed"] == "safetensors headers + sizes"
    assert huge_a["sha256"] == huge_b["sha256"]  # same names, shapes and sizes: the weights are not read
    (tmp_path / "b" / "config.json").write_text(json.dumps({"model_type": "y"}))
    assert model_identity(tmp_path / "b")["sha256"] != huge_a["sha256"]


def test_a_hub_snapshot_folder_records_its_revision(tmp_path):
    folder = _model(tmp_path / "snapshots", b"")
    snapshot = folder / "0123abcd"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    assert model_identity(snapshot)["revision"] == "0123abcd"
    assert model_identity(tmp_path / "snapshots")["revision"] is None
