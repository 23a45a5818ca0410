"""The recurrent mask head in torchvision's Mask R-CNN (crbp_d2.tv): the loss dict (loss_lcp for
the LCP methods only), training with any engine method, the per-step readout at inference,
torchvision's state-dict keys kept, COCO-format loading and pycocotools AP, and the training
script end to end with Detectron2 blocked from being imported."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.roi_heads import maskrcnn_inference  # noqa: E402

from crbp_d2.cli.train_tv_maskrcnn import main  # noqa: E402
from crbp_d2.recurrent import LCP_METHODS  # noqa: E402
from crbp_d2.tv import (  # noqa: E402
    RecurrentRoIHeads,
    build_mask_head_engine,
    small_maskrcnn,
    use_recurrent_mask_head,
)
from crbp_d2.tv.data import CocoInstances, ensure_shapes_dataset, shapes_paths  # noqa: E402
from crbp_d2.tv.evaluate import coco_ap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIDTH = 32
TINY_SHAPES = {"num_train": 4, "num_val": 2, "image_size": 160, "seed": 0}


def toy_batch(size: int = 96):
    """Two images, each with a square and a rectangle (labels 1 and 2)."""
    images = [torch.rand(3, size, size) for _ in range(2)]
    targets = []
    for _ in images:
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 10:40, 10:40] = 1
        masks[1, 50:90, 45:80] = 1
        boxes = torch.tensor([[10.0, 10, 40, 40], [45.0, 50, 80, 90]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def tiny_model(method: str = "crbp", **engine) -> MaskRCNN:
    return small_maskrcnn(
        3,
        head="recurrent",
        width=WIDTH,
        method=method,
        steps=3,
        neumann_steps=3,
        cell_norm_groups=8,
        **engine,
    )


@pytest.mark.parametrize("method", ["bptt", "rbp", "crbp", "jfb", "cbptt"])
def test_every_method_trains_the_cell_and_only_lcp_methods_add_loss_lcp(method):
    model = tiny_model(method).train()
    cell = model.roi_heads.mask_head.engine.cell
    before = [p.detach().clone() for p in cell.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = model(*toy_batch())
    assert ("loss_lcp" in losses) == (method in LCP_METHODS)
    assert {"loss_mask", "loss_classifier", "loss_objectness"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in cell.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, cell.parameters()))
    assert model.roi_heads.mask_head.last_output is None  # no graph kept past the step


def test_loss_lcp_is_the_weighted_penalty_of_the_engine():
    model = tiny_model("crbp", lcp_weight=0.25).train()
    seen = {}

    def keep_lcp(module, args, out) -> None:
        seen["lcp"] = out.lcp

    model.roi_heads.mask_head.engine.register_forward_hook(keep_lcp)
    losses = model(*toy_batch())
    assert float(seen["lcp"]) > 0
    torch.testing.assert_close(losses["loss_lcp"], 0.25 * seen["lcp"])


def test_per_step_readout_ends_at_the_returned_masks_logits():
    model = tiny_model("crbp").eval()
    model.roi_heads.return_timecourse = True
    logits = []
    model.roi_heads.mask_predictor.register_forward_hook(
        lambda m, a, out: logits.append(out) and None
    )
    with torch.no_grad():
        images, _ = toy_batch()
        results = model(images)
    steps = model.roi_heads.mask_head.engine.test_steps
    assert len(logits) == 1 + steps  # the main readout, then one per step
    labels = [r["labels"] for r in results]
    final = torch.cat(maskrcnn_inference(logits[0], labels))[:, 0]
    per_step = torch.cat([r["masks_steps"] for r in results])
    assert per_step.shape == (final.shape[0], steps, 28, 28) and final.shape[0] > 0
    torch.testing.assert_close(per_step[:, -1], final)
    assert not torch.allclose(per_step[:, 0], per_step[:, -1])
    model.roi_heads.return_timecourse = False
    with torch.no_grad():
        assert "masks_steps" not in model(images)[0]


def test_recurrent_roi_heads_keep_torchvisions_box_branch_and_keys():
    plain = small_maskrcnn(3, head="conv", width=WIDTH)
    box_keys = {k for k in plain.state_dict() if k.startswith(("roi_heads.box", "backbone", "rpn"))}
    heads = plain.roi_heads
    model = use_recurrent_mask_head(plain, build_mask_head_engine(WIDTH, cell_norm_groups=8))
    assert isinstance(model.roi_heads, RecurrentRoIHeads)
    assert model.roi_heads.box_head is heads.box_head
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert model.roi_heads.box_coder.weights == heads.box_coder.weights
    keys = set(model.state_dict())
    assert box_keys <= keys
    assert any(k.startswith("roi_heads.mask_head.engine.cell.") for k in keys)


def test_a_width_mismatch_is_one_clear_error():
    model = small_maskrcnn(3, head="conv", width=WIDTH)
    with pytest.raises(ValueError, match="engine's cell has 16 channels.*gives 32"):
        use_recurrent_mask_head(model, build_mask_head_engine(16, cell_norm_groups=8))


def test_convlstm_cell_in_the_head_trains():
    model = tiny_model("crbp", cell="convlstm").train()
    losses = model(*toy_batch())
    sum(losses.values()).backward()
    assert "loss_lcp" in losses


def write_coco(root: Path, masks, categories=(7, 3)):
    """A one-image COCO instance set with ``masks`` (n, H, W) given as RLE segmentations."""
    from PIL import Image
    from pycocotools import mask as mask_util

    height, width = masks.shape[1:]
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(root / "images" / "a.png")
    anns = []
    for k, m in enumerate(masks):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, w, h = mask_util.toBbox(rle).tolist()
        anns.append(
            {
                "id": k + 1,
                "image_id": 5,
                "category_id": categories[k % 2],
                "iscrowd": 0,
                "segmentation": rle,
                "area": float(m.sum()),
                "bbox": [x, y, w, h],
            }
        )
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": height, "width": width}],
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in sorted(set(categories))],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return root / "images", root / "instances.json"


def two_masks(height=40, width=50):
    masks = np.zeros((2, height, width), np.uint8)
    masks[0, 5:15, 4:20] = 1
    masks[1, 20:35, 30:48] = 1
    return masks


def test_coco_instances_targets_and_flip(tmp_path):
    images, annotations = write_coco(tmp_path, two_masks())
    data = CocoInstances(images, annotations)
    assert data.num_classes == 3 and data.category_ids == [3, 7]
    image, target = data[0]
    assert image.shape == (3, 40, 50) and float(image.max()) <= 1.0
    assert target["labels"].tolist() == [2, 1]  # category 7 -> 2, category 3 -> 1
    torch.testing.assert_close(target["boxes"][0], torch.tensor([4.0, 5, 20, 15]))
    assert target["masks"].shape == (2, 40, 50) and int(target["masks"][1].sum()) == 15 * 18
    flipped = CocoInstances(images, annotations, hflip=True)
    torch.manual_seed(1)
    for _ in range(8):  # both outcomes of the coin are consistent
        image, target = flipped[0]
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            torch.testing.assert_close(
                box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            )


class Oracle(torch.nn.Module):
    """Returns the ground truth of the one image (optionally with the masks shifted)."""

    def __init__(self, masks, labels, boxes, shift: int = 0):
        super().__init__()
        self.out = {
            "boxes": boxes,
            "labels": labels,
            "scores": torch.ones(len(labels)),
            "masks": torch.from_numpy(np.roll(masks, shift, axis=2)).float()[:, None],
        }

    def forward(self, images):
        return [self.out]


def test_coco_ap_is_100_for_the_ground_truth_and_lower_for_shifted_masks(tmp_path):
    masks = two_masks()
    data = CocoInstances(*write_coco(tmp_path, masks))
    _, target = data[0]
    perfect = coco_ap(Oracle(masks[[0, 1]], target["labels"], target["boxes"]), data)
    assert perfect["segm_AP"] == pytest.approx(100.0) and perfect["bbox_AP"] == pytest.approx(100.0)
    shifted = coco_ap(Oracle(masks, target["labels"], target["boxes"], shift=6), data)
    assert shifted["segm_AP"] < 60.0 and shifted["bbox_AP"] == pytest.approx(100.0)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "tiny"
    return ensure_shapes_dataset(root, TINY_SHAPES)


def test_shapes_set_loads_with_pycocotools(tiny_shapes):
    data = CocoInstances(*shapes_paths(tiny_shapes, "train"))
    assert len(data) == 4 and data.num_classes == 5
    image, target = data[0]
    assert image.shape == (3, 160, 160) and len(target["labels"]) >= 1
    assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) <= 4


def test_training_script_runs_without_detectron2(tiny_shapes, tmp_path):
    """The whole path (data, model, training, evaluation, record) in a fresh interpreter in which
    importing detectron2 fails."""
    record = tmp_path / "record.json"
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "from crbp_d2.cli.train_tv_maskrcnn import main\n"
        f"rc = main(['--iters', '3', '--batch', '1', '--steps', '2', '--width', '32', "
        f"'--data-root', {str(tiny_shapes)!r}, '--json', {str(record)!r}, '--log-period', '1', "
        f"'--eval-steps', '2', '3', '--shared-machine'])\n"
        "assert rc == 0, rc\n"
        "assert not [m for m in sys.modules if m.startswith('detectron2') and sys.modules[m]]\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    saved = json.loads(record.read_text())
    assert saved["head"] == "recurrent" and saved["shared_machine"] is True
    assert [e["test_steps"] for e in saved["evaluations"]] == [2, 3]
    assert "loss_lcp" in saved["log"][-1] and len(saved["log"]) == 3
    # the AP values themselves: test_coco_ap_is_100_for_the_ground_truth_and_lower_for_shifted_masks
    # (same evaluation code, ground truth -> 100); here each is finite and reaches the table
    assert all(math.isfinite(e["segm_AP"]) for e in saved["evaluations"])
    table = tmp_path / "table.md"
    assert main(["--report", str(record), "--markdown", str(table)]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("| recurrent")]
    assert [row.split(" | ")[1] for row in rows] == ["2", "3"]
    assert [row.split(" | ")[4] for row in rows] == [
        f"{e['segm_AP']:.1f}" for e in saved["evaluations"]
    ]
    assert "shared with other jobs" in table.read_text()


def test_training_script_reports_a_folder_without_the_set_in_one_line(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "train_tv_maskrcnn.py"),
            "--iters",
            "1",
            "--data-root",
            str(tmp_path),
            "--head",
            "conv",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=300,
    )
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("train_tv_maskrcnn: error:") and "instances_train.json" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations", "train"]
