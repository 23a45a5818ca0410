"""Storage formats, resumable CLI, torch datasets, the C-RBP transform and the baselines."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import reference_baseline_scores
from PIL import Image

from crbp_d2.contours.generator import generate_sample, preset
from crbp_d2.contours.stats import pixel_invariant_violations
from crbp_d2.pathfinder.data.datasets import (
    PathfinderOnTheFly,
    PathfinderStored,
    PathfinderTransform,
    random_flip_code,
)
from crbp_d2.pathfinder.data.storage import (
    StoredPathfinder,
    encode_png,
    generate_dataset,
    png_relpaths,
    read_list,
    read_png,
    split_test_indices,
)
from crbp_d2.pathfinder.evaluation.baselines import (
    all_ink,
    dataset_pairs,
    detect_marker,
    evaluate_baselines,
    flood_fill,
    iou,
    marker_only,
)

CLI = ["-m", "crbp_d2.cli.generate_pathfinder"]
PF6 = preset(6)


def _files(root: Path):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".npy", ".txt")
    }


# ------------------------------------------------------------------------------- transform
def test_transform_shapes_dtypes_and_threshold():
    sample = generate_sample(PF6, 0, 0)
    image, label = PathfinderTransform()(sample.image, sample.label)
    assert image.shape == (1, 150, 150) and image.dtype == torch.float32
    assert label.shape == (150, 150) and label.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 1
    resized = np.asarray(Image.fromarray(sample.label).resize((150, 150), Image.BICUBIC))
    assert torch.equal(label, torch.from_numpy((resized / 255.0 > 0.2).astype(np.int64)))
    expected_image = np.asarray(Image.fromarray(sample.image).resize((150, 150), Image.BICUBIC))
    assert torch.allclose(image[0], torch.from_numpy(expected_image / 255.0).float())
    # The 0.2 threshold makes the 150-px label fatter than a 0.5 one (reference: x1.7 per area).
    fat = label.sum().item() / (sample.label > 0).sum() * 4
    assert 1.2 < fat < 2.5
    small_image, small_label = PathfinderTransform(size=100)(sample.image, sample.label)
    assert small_image.shape == (1, 100, 100) and small_label.shape == (100, 100)


def test_transform_flips_image_and_label_together():
    sample = generate_sample(PF6, 0, 1)
    transform = PathfinderTransform()
    image, label = transform(sample.image, sample.label, 0)
    for code, dims in ((1, [-1]), (2, [-2]), (3, [-2, -1])):
        flipped_image, flipped_label = transform(sample.image, sample.label, code)
        assert torch.equal(flipped_image, image.flip(dims))
        assert torch.equal(flipped_label, label.flip(dims))
    unflipped = PathfinderTransform(flip=False)(sample.image, sample.label, 3)
    assert torch.equal(unflipped[0], image)


def test_transform_rejects_bad_input():
    with pytest.raises(ValueError, match="size must be >= 1"):
        PathfinderTransform(size=0)
    with pytest.raises(ValueError, match="uint8"):
        PathfinderTransform()(np.zeros((300, 300), np.float32), np.zeros((300, 300), np.uint8))


def test_flip_codes_are_uniform_deterministic_and_change_with_epoch():
    codes = np.array([random_flip_code(0, i) for i in range(2000)])
    assert set(np.unique(codes)) == {0, 1, 2, 3}
    assert np.all(np.abs(np.bincount(codes) / 2000 - 0.25) < 0.05)
    assert [random_flip_code(0, i) for i in range(20)] == list(codes[:20])
    assert [random_flip_code(0, i, epoch=1) for i in range(50)] != list(codes[:50])


# ------------------------------------------------------------------------------- on the fly
def test_on_the_fly_items_are_functions_of_seed_and_index():
    dataset = PathfinderOnTheFly(PF6, num=8, seed=4)
    image, label = dataset[5]
    sample = generate_sample(PF6, 4, 5)
    expected = PathfinderTransform()(sample.image, sample.label, random_flip_code(4, 5))
    assert torch.equal(image, expected[0]) and torch.equal(label, expected[1])
    raw = PathfinderOnTheFly(PF6, num=8, seed=4, raw=True)[5]
    assert np.array_equal(raw[0], sample.image)
    with pytest.raises(IndexError):
        dataset[8]


def test_dataloader_workers_agree_with_a_single_process():
    dataset = PathfinderOnTheFly(PF6, num=6, seed=2, transform=PathfinderTransform(size=100))
    single = list(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=0))
    multi = list(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2))
    for (a_image, a_label), (b_image, b_label) in zip(single, multi):
        assert torch.equal(a_image, b_image) and torch.equal(a_label, b_label)


# ------------------------------------------------------------------------------- storage
def test_png_layout_lists_and_split(tmp_path):
    root = generate_dataset(
        tmp_path,
        PF6,
        num=26,
        seed=3,
        fmt="png",
        workers=1,
        shard_size=10,
        batch_size=12,
        num_test=5,
        progress=False,
    )
    assert root == tmp_path / "curv_contour_length_6"
    assert png_relpaths(25, 6, 12) == (
        "curv_contour_length_6/imgs/3/sample_1.png",
        "curv_contour_length_6/seg/3/sample_1.png",
    )
    for index in (0, 13, 25):
        sample = generate_sample(PF6, 3, index)
        image_rel, label_rel = png_relpaths(index, 6, 12)
        assert (tmp_path / image_rel).read_bytes() == encode_png(sample.image)
        assert (tmp_path / label_rel).read_bytes() == encode_png(sample.label)
        stored = np.asarray(Image.open(tmp_path / image_rel))
        assert stored.dtype == np.uint8 and stored.shape == (300, 300)
        assert np.array_equal(stored, sample.image)
    train = (tmp_path / "train_images_6_SEG.txt").read_text().splitlines()
    test = (tmp_path / "test_images_6_SEG.txt").read_text().splitlines()
    assert len(train) == 21 and len(test) == 5
    assert all(
        line.endswith(".png 0") and line.startswith("curv_contour_length_6/imgs/")
        for line in train + test
    )
    assert set(read_list(tmp_path / "train_images_6_SEG.txt")).isdisjoint(
        read_list(tmp_path / "test_images_6_SEG.txt")
    )
    stored = StoredPathfinder(tmp_path, split="test")
    assert len(stored) == 5
    assert list(stored.indices) == list(split_test_indices(26, 5, 3))
    image, label = stored.get(0)
    expected = generate_sample(PF6, 3, int(stored.indices[0]))
    assert np.array_equal(image, expected.image) and np.array_equal(label, expected.label)
    via_list = StoredPathfinder(tmp_path, list_file=tmp_path / "test_images_6_SEG.txt")
    assert np.array_equal(via_list.get(0)[1], expected.label)


def test_npy_shards_equal_on_the_fly_items(tmp_path):
    root = generate_dataset(
        tmp_path,
        PF6,
        num=15,
        seed=7,
        fmt="npy",
        workers=1,
        shard_size=4,
        store_size=150,
        num_test=3,
        progress=False,
    )
    index = json.loads((root / "npy" / "index.json").read_text())
    assert [s["stop"] - s["start"] for s in index["shards"]] == [4, 4, 4, 3]
    shard = np.load(root / "npy" / "shard_000001.npy")
    assert shard.shape == (4, 2, 150, 150) and shard.dtype == np.uint8
    transform = PathfinderTransform(size=150)
    stored = PathfinderStored(tmp_path, "all", 6, transform, flip_seed=7)
    fly = PathfinderOnTheFly(PF6, num=15, seed=7, transform=transform)
    for position in (0, 6, 14):
        assert all(torch.equal(a, b) for a, b in zip(stored[position], fly[position]))
    train = PathfinderStored(tmp_path, "train", 6)
    test = PathfinderStored(tmp_path, "test", 6)
    assert len(train) == 12 and len(test) == 3
    assert set(train.store.indices).isdisjoint(test.store.indices)


def test_outputs_do_not_depend_on_worker_count(tmp_path):
    outputs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        generate_dataset(
            out, PF6, num=20, seed=11, fmt="npy", workers=workers, shard_size=3, progress=False
        )
        outputs.append(_files(out))
    assert outputs[0] == outputs[1] == outputs[2]
    png_outputs = []
    for workers in (1, 2):
        out = tmp_path / f"png{workers}"
        generate_dataset(
            out, PF6, num=14, seed=11, fmt="png", workers=workers, shard_size=3, progress=False
        )
        png_outputs.append(_files(out))
    assert png_outputs[0] == png_outputs[1]
    assert len(png_outputs[0]) == 2 * 14 + 2


def test_rerun_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    generate_dataset(
        tmp_path, PF6, num=6, seed=0, fmt="png", workers=1, shard_size=3, progress=False
    )
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="seed: 0 there vs 1 now"):
        generate_dataset(
            tmp_path, PF6, num=6, seed=1, fmt="png", workers=1, shard_size=3, progress=False
        )
    with pytest.raises(ValueError, match="continuity=1.8->2.0"):
        generate_dataset(
            tmp_path,
            preset(6, continuity=2.0),
            num=6,
            seed=0,
            fmt="png",
            workers=1,
            shard_size=3,
            progress=False,
        )
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after
    with pytest.raises(ValueError, match="num must be an integer >= 1"):
        generate_dataset(tmp_path / "x", PF6, num=0)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- CLI
def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, *CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 120),
        **kwargs,
    )


def test_cli_resumes_after_a_killed_run(tmp_path):
    out = tmp_path / "data"
    args = [
        "--length",
        14,
        "--num",
        200,
        "--seed",
        3,
        "--out",
        out,
        "--workers",
        2,
        "--shard-size",
        4,
        "--no-progress",
    ]
    process = subprocess.Popen(
        [sys.executable, *CLI, *map(str, args)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards = out / "curv_contour_length_14" / ".shards"
    deadline = time.time() + 90
    try:
        while time.time() < deadline and len(list(shards.glob("*.done"))) < 2:
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = sorted(shards.glob("*.done"))
    assert 2 <= len(finished) < 50, "the run must be killed part-way"
    finished_ids = {int(p.stem.split("_")[1]) for p in finished}
    kept = {}
    for shard in finished_ids:
        for index in range(4 * shard, 4 * shard + 4):
            for rel in png_relpaths(index, 14, 25_000):
                kept[rel] = (out / rel).stat().st_mtime_ns
    # An interrupted shard may hold half-written files: simulate one.
    unfinished = min(set(range(50)) - finished_ids)
    broken = out / png_relpaths(4 * unfinished, 14, 25_000)[0]
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"\x89PNG truncated")

    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    for rel, mtime in kept.items():
        assert (out / rel).stat().st_mtime_ns == mtime, f"finished shard file {rel} was rewritten"
    for index in range(200):
        sample = generate_sample(preset(14), 3, index)
        image_rel, label_rel = png_relpaths(index, 14, 25_000)
        assert (out / image_rel).read_bytes() == encode_png(sample.image), image_rel
        assert (out / label_rel).read_bytes() == encode_png(sample.label), label_rel
        # The PF14 set made by the CLI passes the pixel-level invariants of the generator.
        image, label = read_png(out / image_rel), read_png(out / label_rel)
        assert pixel_invariant_violations(image, label, 14) == [], image_rel
    assert len((out / "test_images_14_SEG.txt").read_text().splitlines()) == 10
    assert len((out / "train_images_14_SEG.txt").read_text().splitlines()) == 190
    pngs = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = _cli(*args)  # everything is finished: nothing is redone
    assert again.returncode == 0
    assert pngs == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}


def test_cli_impossible_contour_fails_fast_with_a_message(tmp_path):
    began = time.time()
    result = _cli(
        "--length",
        90,
        "--num",
        10,
        "--out",
        tmp_path,
        "--set",
        "max_pair_restarts=50",
        "--no-progress",
    )
    assert result.returncode == 2
    assert "could not place the two contours of contour_length=90" in result.stderr
    assert time.time() - began < 60
    assert not any(tmp_path.iterdir())
    result = _cli("--length", 9, "--num", 10, "--out", tmp_path, "--set", "bogus=1")
    assert result.returncode == 2 and "unknown parameter 'bogus'" in result.stderr


def test_cli_preview_writes_a_contact_sheet(tmp_path):
    result = _cli("--length", 9, "--num", 0, "--out", tmp_path, "--preview")
    assert result.returncode == 0, result.stderr
    sheet = np.asarray(Image.open(tmp_path / "curv_contour_length_9" / "preview.png"))
    assert sheet.shape == (4 * 304 + 4, 4 * 304 + 4, 3)
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 100)
    assert red.sum() > 16 * 100  # every tile shows its label


# ------------------------------------------------------------------------------- baselines
def test_baselines_find_the_marker_and_flood_fill_beats_marker_only():
    params = preset(9)
    dataset = PathfinderOnTheFly(
        params, num=24, seed=5, transform=PathfinderTransform(150, flip=False)
    )
    for index in range(6):
        image, _ = dataset[index]
        row, col = detect_marker(image[0].numpy(), 2.5)
        true_row, true_col = generate_sample(params, 5, index).meta.marker_center
        assert abs(row - true_row / 2) <= 1.5 and abs(col - true_col / 2) <= 1.5
    pairs = list(dataset_pairs(dataset))
    results = evaluate_baselines(pairs, marker_radius=2.5, radii=(1, 2, 3))
    assert results["marker_only"]["n"] == 24
    # the same scores computed apart (numpy / scipy.ndimage, a flat-disk marker search instead
    # of the soft disk): measured differences <= 7.1e-4 (a marker found 1 px apart on a few
    # images); tolerance 2e-3, about 3x that, while the baselines differ by > 0.05
    reference = reference_baseline_scores(pairs, 2.5, (1, 2, 3))
    for name in ("marker_only", "flood_fill_k1", "flood_fill_k2", "flood_fill_k3"):
        assert results[name]["mean_iou"] == pytest.approx(reference[name]["mean_iou"], abs=2e-3)
        assert results[name]["iou"] == pytest.approx(reference[name]["iou"], abs=2e-3)
        # one batch of the paper's metric (24 < 128 images): F1 / (2 - F1) = pooled IoU
        assert results[name]["paper_iou"] == pytest.approx(reference[name]["iou"], abs=2e-3)
    # all ink, pooled: the marked contour's pixels over the union of ink and label
    ink = [(image > 0.2, label) for image, label in pairs]
    pooled = sum((i & lab).sum() for i, lab in ink) / sum((i | lab).sum() for i, lab in ink)
    assert results["all_ink"]["iou"] == pytest.approx(float(pooled), abs=1e-9)
    assert results["all_ink"]["iou"] < results["flood_fill_best"]["iou"] - 0.05
    best = max((1, 2, 3), key=lambda r: reference[f"flood_fill_k{r}"]["mean_iou"])
    assert results["flood_fill_best"]["radius"] == best
    assert results["flood_fill_best"]["mean_iou"] > results["marker_only"]["mean_iou"] + 0.15


def test_baseline_predictions_are_subsets_of_the_ink_and_iou_is_exact():
    image = np.zeros((50, 50), np.float32)
    image[20:26, 20:26] = 1.0  # a "marker"
    image[22:24, 26:40] = 1.0  # ink attached to it
    image[22:24, 44:48] = 1.0  # ink 4 px away
    label = image > 0.2
    assert detect_marker(image, 2.5) in {(r, c) for r in range(21, 25) for c in range(21, 25)}
    assert marker_only(image, 2.5).sum() > 0
    assert not flood_fill(image, 1, 2.5)[:, 44:].any()
    assert np.array_equal(all_ink(image), label)  # the far ink too
    assert iou(all_ink(image), flood_fill(image, 1, 2.5)) == pytest.approx(
        flood_fill(image, 1, 2.5).sum() / label.sum()
    )
    assert flood_fill(image, 3, 2.5)[:, 44:].any()
    assert iou(label, label) == 1.0 and iou(label, ~label) == 0.0
    assert iou(np.zeros_like(label), np.zeros_like(label)) == 1.0


# ------------------------------------------------------------------------------- nothing lost
def _descendants(pid):
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cli_workers_die_with_a_killed_parent(tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "data"
    args = ["--length", 14, "--num", 2000, "--out", out, "--workers", 2, "--shard-size", 4]
    process = subprocess.Popen(
        [sys.executable, *CLI, *map(str, args), "--no-progress"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards = out / "curv_contour_length_14" / ".shards"
    workers = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list(shards.glob("*.done")):
            time.sleep(0.01)
        workers = [p for p in _descendants(process.pid) if _alive(p)]
        assert len(workers) >= 2, "the workers must be running"
        os.kill(process.pid, signal.SIGKILL)  # the parent only, not its process group
        process.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "workers outlived their killed parent"
        written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        time.sleep(1.0)
        assert written == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    finally:
        for worker in workers:
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("fmt", ["png", "npy"])
@pytest.mark.parametrize("verify", ["checksum", "size"])
def test_rerun_rewrites_a_truncated_file(tmp_path, fmt, verify, capfd):
    kwargs = dict(seed=5, fmt=fmt, workers=1, shard_size=3, num_test=2, progress=False)
    fresh = _files(generate_dataset(tmp_path / "fresh", PF6, num=8, **kwargs).parent)
    out = tmp_path / "data"
    root = generate_dataset(out, PF6, num=8, verify=verify, **kwargs)
    if fmt == "png":
        broken = out / png_relpaths(4, 6, 25_000)[1]  # a label of shard 1
    else:
        broken = root / "npy" / "shard_000001.npy"
    untouched = (
        out / png_relpaths(0, 6, 25_000)[0] if fmt == "png" else root / "npy" / "shard_000000.npy"
    )
    mtime = untouched.stat().st_mtime_ns
    broken.write_bytes(broken.read_bytes()[:-7])
    capfd.readouterr()
    generate_dataset(out, PF6, num=8, verify=verify, **kwargs)
    err = capfd.readouterr().err
    assert f"shard 1: {broken} has" in err and "rewriting it" in err, err
    assert len(err.strip().splitlines()) == 1
    assert _files(out) == fresh
    assert untouched.stat().st_mtime_ns == mtime, "an intact shard was rewritten"
    # Same size, other bytes: only the checksum sees it.
    data = bytearray(broken.read_bytes())
    data[-20] ^= 0xFF
    broken.write_bytes(bytes(data))
    generate_dataset(out, PF6, num=8, verify=verify, **kwargs)
    err = capfd.readouterr().err
    if verify == "checksum":
        assert "SHA-256 differs" in err and str(broken) in err, err
        assert _files(out) == fresh
    else:
        assert err == ""


def test_rerun_checks_shards_recorded_without_checksums(tmp_path, capfd):
    """Datasets written before the records held sizes and checksums are checked structurally."""
    kwargs = dict(seed=2, workers=1, shard_size=3, num_test=1, progress=False)
    for fmt in ("png", "npy"):
        out = tmp_path / fmt
        root = generate_dataset(out, PF6, num=6, fmt=fmt, **kwargs)
        fresh = _files(out)
        for done in (root / ".shards").glob("*.done"):
            record = json.loads(done.read_text())
            done.write_text(json.dumps({"start": record["start"], "stop": record["stop"]}))
            if fmt == "npy":
                done.unlink()  # the old npy layout had no record at all
        broken = (
            out / png_relpaths(3, 6, 25_000)[0]
            if fmt == "png"
            else root / "npy" / "shard_000001.npy"
        )
        broken.write_bytes(broken.read_bytes()[:-3])
        capfd.readouterr()
        generate_dataset(out, PF6, num=6, fmt=fmt, **kwargs)
        err = capfd.readouterr().err
        assert f"shard 1: {broken}" in err and len(err.strip().splitlines()) == 1, err
        assert _files(out) == fresh
        assert "files" in json.loads((root / ".shards" / "shard_000000.done").read_text())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: b"", "is empty (0 bytes)"),
        (lambda data: data[:-100], "is truncated"),
        (lambda data: data[:60], "is not a readable npy file"),
        (lambda data: bytes(range(256)) * 4, "is not a readable npy file"),
        (lambda data: data[:30] + b"\xff" * (len(data) - 30), "is not a readable npy file"),
    ],
    ids=["empty", "truncated", "truncated-header", "garbage", "garbled-header"],
)
def test_bad_npy_shard_gives_one_clear_error(tmp_path, capsys, damage, message):
    root = generate_dataset(
        tmp_path, PF6, num=6, seed=1, fmt="npy", workers=1, shard_size=3, progress=False
    )
    shard = root / "npy" / "shard_000001.npy"
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(ValueError) as info:
        PathfinderStored(tmp_path, "all", 6)
    text = str(info.value)
    assert message in text and str(shard) in text and "\n" not in text, text
    # train_pathfinder.py: one line, exit status 2, nothing trained.
    from crbp_d2.cli import train_pathfinder

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"OUTPUT_DIR: {tmp_path / 'run'}\n")
    data = ["DATA.SOURCE", "disk", "DATA.ROOT", str(tmp_path)]
    lengths = ["DATA.TRAIN_LENGTH", "6", "DATA.TEST_LENGTH", "6"]
    capsys.readouterr()
    code = train_pathfinder.main(["--config-file", str(cfg), "--no-progress", *data, *lengths])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("train_pathfinder.py: error: "), lines
    assert message in lines[0] and str(shard) in lines[0]
