"""Reading the parents' rows: with O_DIRECT (aligned reads around any offset) and through the page cache,
the same bytes at any position and dtype; a file system that refuses O_DIRECT is read through the cache;
a truncated file is named with its tensor."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from harness.assembly import reads
from harness.assembly.checkpoint import DIRECT_ALIGN, ITEMSIZES, OpenFiles, TensorInfo
from harness.assembly.reads import DTYPES, read_rows
from harness.common.errors import InputError

FILE_BYTES = 3 * DIRECT_ALIGN + 123


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("reads") / "shard.safetensors"
    data = torch.randint(0, 256, (FILE_BYTES,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path.write_bytes(data.numpy().tobytes())
    return path, path.read_bytes()


def _tensor(path: Path, dtype: str, start: int, rows: int, width: int = 3) -> TensorInfo:
    return TensorInfo("t", dtype, (rows, width), path, start, rows * width * ITEMSIZES[dtype])


def _expected(data: bytes, tensor: TensorInfo, first: int, stop: int) -> torch.Tensor:
    row = tensor.row_bytes()
    piece = torch.tensor(list(data[tensor.start + first * row : tensor.start + stop * row]), dtype=torch.uint8)
    return piece.view(DTYPES[tensor.dtype]).reshape(stop - first, *tensor.shape[1:])


def _direct_possible(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("dtype", ["F32", "BF16", "U8"])
@pytest.mark.parametrize("start", [0, 1, 3, DIRECT_ALIGN - 5, DIRECT_ALIGN, DIRECT_ALIGN + 4])
def test_rows_read_directly_or_through_the_cache_are_the_files_bytes_at_any_offset(data_file, direct, dtype, start):
    path, data = data_file
    tensor = _tensor(path, dtype, start, rows=(FILE_BYTES - start) // (3 * ITEMSIZES[dtype]))
    with OpenFiles(direct) as files:
        assert files.reading(path)[1] == (DIRECT_ALIGN if direct and _direct_possible(path) else 1)
        for first, stop in [(0, tensor.rows), (1, tensor.rows - 1), (tensor.rows - 1, tensor.rows), (2, 2)]:
            got = read_rows(tensor, first, stop, files)
            assert got.dtype == DTYPES[dtype] and got.is_contiguous()
            assert torch.equal(got.view(torch.uint8), _expected(data, tensor, first, stop).view(torch.uint8))


def test_a_file_system_that_refuses_direct_reads_is_read_through_the_cache(data_file, monkeypatch):
    path, data = data_file
    if not _direct_possible(path):
        pytest.skip("this file system has no O_DIRECT")
    tensor = _tensor(path, "F32", 5, rows=100)
    with OpenFiles(direct=True) as files:
        direct_fd, _ = files.reading(path)
        real = reads.read_exactly

        def refusing(fd, view, position, need=None):
            if fd == direct_fd:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, view, position, need)

        monkeypatch.setattr(reads, "read_exactly", refusing)
        got = read_rows(tensor, 3, 90, files).view(torch.uint8)
        assert torch.equal(got, _expected(data, tensor, 3, 90).view(torch.uint8))  # (the bytes: some are NaN)
        assert files.reading(path) == (files.fd(path), 1)


@pytest.mark.parametrize("direct", [True, False])
def test_a_truncated_file_is_named_with_the_tensor(data_file, direct):
    path, _ = data_file
    tensor = TensorInfo("model.layers.0.mlp.experts.0.up_proj.weight", "BF16", (100, 30), path, FILE_BYTES - 50, 6000)
    with OpenFiles(direct) as files, pytest.raises(InputError, match=r"up_proj\.weight.*truncated") as caught:
        read_rows(tensor, 0, 100, files)
    assert str(path) in str(caught.value)


def test_ranges_asked_of_the_page_cache_beforehand_are_read_through_it(data_file):
    path, data = data_file
    if not _direct_possible(path):
        pytest.skip("this file system has no O_DIRECT")
    tensor = _tensor(path, "F32", 8, rows=200)
    with OpenFiles(direct=True, cached={path: [(8, 8 + 100 * tensor.row_bytes())]}) as files:
        assert files.reading(path, 8, 100 * tensor.row_bytes()) == (files.fd(path), 1)
        assert files.reading(path, 8, 101 * tensor.row_bytes())[1] == DIRECT_ALIGN  # runs past the range
        got = read_rows(tensor, 0, 200, files).view(torch.uint8)
        assert torch.equal(got, _expected(data, tensor, 0, 200).view(torch.uint8))


def test_the_warm_start_asks_for_the_first_bytes_the_build_reads_in_its_order(parents):
    from harness.assembly.plan import make_plan
    from harness.assembly.recipe import Recipe

    a, b = parents("qwen3_moe")
    recipe = Recipe.model_validate({"parents": {"a": str(a), "b": str(b)}, "groups": {"all": {"b": 0.5}}})
    plan = make_plan(recipe, "recipe")
    first = plan.shard_units(0)[0]
    budget = plan.base.tensors[first.name].nbytes + 10
    asked = plan.start_reading([0], budget)
    ranges = [(path, r) for path, rs in asked.items() for r in rs]
    assert sum(stop - start for _, (start, stop) in ranges) >= budget
    whole = plan.base.tensors[first.name]
    assert (whole.file, (whole.start, whole.start + whole.nbytes)) in ranges  # the base's first tensor, whole
    other = plan.parent("b").tensors[first.name]
    assert any(path == other.file and start == other.start for path, (start, _) in ranges)  # then b's rows
