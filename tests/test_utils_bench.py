"""The saved-for-backward counter on cases whose answer is known."""

import torch

from crbp_d2.utils.bench import SavedStorageBytes


def test_a_tensor_saved_by_three_operations_counts_once():
    x = torch.randn(1000, requires_grad=True)
    y = x * 3  # (multiplying by a number saves nothing)
    with SavedStorageBytes().counting() as saved:
        loss = y.sin().sum() + y.cos().sum() + y.pow(2).sum()  # each saves y
    loss.backward()
    assert saved.total == 1000 * 4  # y's 4000 bytes, once
    assert saved.references == 3 * 1000 * 4  # the old count: once per operation


def test_views_count_the_bytes_of_their_storage_they_cover():
    base = torch.randn(10, 100, requires_grad=True) * 1.0
    with SavedStorageBytes().counting() as saved:
        a = base[:6].sin().sum()  # rows 0-5
        b = base[4:].cos().sum()  # rows 4-9: overlaps rows 4-5
    (a + b).backward()
    assert saved.total == 1000 * 4 and saved.references == 1200 * 4
    base = torch.randn(10, 100, requires_grad=True) * 1.0
    with SavedStorageBytes().counting() as saved:
        base[:, :10].sin().sum().backward()  # 10 columns: reaches 9 rows * 100 + 10 elements
    assert saved.total == (9 * 100 + 10) * 4


def test_distinct_tensors_add_up_and_freed_storages_are_not_merged():
    with SavedStorageBytes().counting() as saved:
        for _ in range(3):  # each iteration's tensor is freed before the next is made
            z = torch.randn(256, requires_grad=True) * 2.0
            z.sin().sum().backward()
            del z
    assert saved.total == saved.references == 3 * 256 * 4


def test_machine_record_carries_the_provenance_fields(monkeypatch):
    import subprocess

    from crbp_d2.utils.machine import PROVENANCE_FIELDS, machine_record

    monkeypatch.setenv("CRBP_SHARED_MACHINE", "1")
    record = machine_record("cpu")
    assert set(PROVENANCE_FIELDS) <= set(record) and record["shared_machine"] is True
    assert record["threads"] == torch.get_num_threads() and record["torch"] == torch.__version__
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=__file__.rsplit("/", 2)[0]
    ).stdout.strip()
    if head:  # a git checkout (CI clones one)
        assert record["git_commit"].split("+")[0] == head
    monkeypatch.setenv("CRBP_SHARED_MACHINE", "0")
    assert machine_record("cpu")["shared_machine"] is False
