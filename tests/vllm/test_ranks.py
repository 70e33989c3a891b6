"""Every worker's answer counts: status and records merged over pipeline stages and tensor-parallel
copies (fake per-rank answers; no engine, so these run without vLLM too)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.vllm_plugin.checks import MoteVLLMError
from harness.vllm_plugin.protocol import WorkerRecord, error_answer
from harness.vllm_plugin.ranks import merge_counts, merge_keyed, merge_records, merge_status

LAYERS = [1, 2, 3, 4]


def status(layers, **over):
    base = {
        "vllm_version": "0.32.0",
        "model_type": "deepseek_v3",
        "moe_layers": {str(layer): 16 for layer in layers},
        "top_k": 2 if layers else None,
        "compiled": False,
        "hook_problem": None,
        "hook_ops": {str(layer): "python" for layer in layers},
        "global_intervention": "none",
        "record_all": False,
        "pending_records": [],
        "selection_edits": {str(layer): "ok" for layer in layers},
    }
    return {**base, **over}


def full_record(n_tokens=5, seed=0) -> WorkerRecord:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(16)[:2] for _ in range(n_tokens * len(LAYERS))]).reshape(n_tokens, len(LAYERS), 2)
    weights = rng.random((n_tokens, len(LAYERS), 2), dtype=np.float32)
    return WorkerRecord(np.arange(n_tokens), ids.astype(np.int32), weights, np.asarray(LAYERS, dtype=np.int32))


def stage(record: WorkerRecord, layers) -> WorkerRecord:
    columns = [list(record.layers).index(layer) for layer in layers]
    return WorkerRecord(
        record.positions,
        record.topk_ids[:, columns],
        record.topk_weights[:, columns],
        np.asarray(layers, dtype=np.int32),
    )


def test_status_of_two_pipeline_stages_covers_every_moe_layer():
    merged = merge_status([status([1, 2]), status([3, 4])])
    assert merged["moe_layers"] == {"1": 16, "2": 16, "3": 16, "4": 16}
    assert list(merged["hook_ops"]) == ["1", "2", "3", "4"] and merged["top_k"] == 2 and merged["ranks"] == 2


def test_status_with_a_dense_only_stage_and_tensor_parallel_copies():
    # PP=2 x TP=2 in rank order (pp0tp0, pp0tp1, pp1tp0, pp1tp1); stage 0 holds only the dense layer 0
    merged = merge_status([status([]), status([]), status([1, 2, 3, 4]), status([1, 2, 3, 4])])
    assert sorted(int(k) for k in merged["moe_layers"]) == LAYERS and merged["top_k"] == 2


def test_status_hook_problem_of_any_rank_is_kept():
    merged = merge_status([status([1, 2]), status([3, 4], hook_problem="full CUDA graphs")])
    assert merged["hook_problem"] == "full CUDA graphs"


def test_status_ranks_that_disagree_are_an_error():
    with pytest.raises(MoteVLLMError, match="global_intervention"):
        merge_status([status([1, 2]), status([3, 4], global_intervention="suppress-mask-abc")])


def test_records_of_two_stages_concatenate_in_ascending_layer_order():
    whole = full_record()
    # stage answers in any order: the merge sorts by absolute layer
    merged = merge_records([stage(whole, [3, 4]).encode(), stage(whole, [1, 2]).encode()], "k", LAYERS)
    assert merged is not None
    assert merged.layers.tolist() == LAYERS
    assert np.array_equal(merged.topk_ids, whole.topk_ids)
    assert np.array_equal(merged.topk_weights, whole.topk_weights)
    assert np.array_equal(merged.positions, whole.positions)


def test_tensor_parallel_copies_count_once():
    whole = full_record()
    a, b = stage(whole, [1, 2]).encode(), stage(whole, [3, 4]).encode()
    merged = merge_records([a, a, b, b], "k", LAYERS)
    assert merged is not None and np.array_equal(merged.topk_ids, whole.topk_ids)


def test_tensor_parallel_copies_that_disagree_are_an_error():
    whole, other = full_record(seed=0), full_record(seed=1)
    answers = [stage(whole, [1, 2]).encode(), stage(other, [1, 2]).encode(), stage(whole, [3, 4]).encode()]
    with pytest.raises(MoteVLLMError, match="recorded different routing"):
        merge_records(answers, "k", LAYERS)


def test_a_stage_without_the_record_is_an_error_not_half_a_record():
    whole = full_record()
    with pytest.raises(MoteVLLMError, match=r"missing \[3, 4\]"):
        merge_records([stage(whole, [1, 2]).encode(), None], "k", LAYERS)


def test_stages_with_different_positions_are_an_error():
    whole, short = full_record(5), full_record(4)
    with pytest.raises(MoteVLLMError, match="different positions"):
        merge_records([stage(whole, [1, 2]).encode(), stage(short, [3, 4]).encode()], "k", LAYERS)


def test_no_rank_holding_the_key_is_none_and_an_error_answer_is_raised():
    assert merge_records([None, None], "k", LAYERS) is None
    with pytest.raises(MoteVLLMError, match="used by request"):
        merge_records([error_answer("record key 'k' was used by request 'a'"), None], "k", LAYERS)


def test_count_maps_of_two_stages_merge_by_layer():
    def counts(layers):
        return {
            "layers": layers,
            "prompt": [[layer] * 3 for layer in layers],
            "generated": [[-layer] * 3 for layer in layers],
        }

    merged = merge_counts([counts([3, 4]), counts([3, 4]), counts([1, 2])], "k", LAYERS)
    assert merged == counts(LAYERS)


def test_keyed_answers_gather_every_rank():
    assert merge_keyed([{"a": 1, "b": 2}, {"a": 3}], ["a", "b"]) == {"a": [1, 3], "b": [2, None]}


def test_a_record_round_trips_through_both_wire_forms():
    record = full_record(n_tokens=7, seed=3)
    for answer in (record.encode(), record.to_arrays()):
        back = WorkerRecord.decode(answer)
        for field in ("positions", "topk_ids", "topk_weights", "layers"):
            assert np.array_equal(getattr(back, field), getattr(record, field)), field
            assert getattr(back, field).dtype == getattr(record, field).dtype, field
