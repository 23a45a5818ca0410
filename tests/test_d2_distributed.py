"""Multi-process Detectron2 training on CPU (gloo): the recurrent mask head under DDP gives the
single-process gradient, also when one process has 0 RoIs; tools/train_net.py --num-gpus 2 on CPU.

Detectron2's losses are per-process quantities that DDP averages over the W processes, so the
2-process gradient is that of (L_0 + L_1) / 2, L_r the head's loss on process r's RoIs (with a
synchronised readout norm: under the statistics of all RoIs). For the single-process reference of
the same total batch that means:

- an even split (3 + 3 RoIs): ``loss_mask`` is a mean over the RoIs, so the mean of the two halves'
  means is the full batch's; ``loss_lcp`` is summed over the RoIs (``LCP_REDUCTION sum``, the
  R-FPN default), so it counts half: reference loss ``loss_mask + loss_lcp / 2``;
- one process with 0 RoIs (0 + 5): its loss is 0 and the other's is the full batch's, so the
  reference loss is ``(loss_mask + loss_lcp) / 2``.

Every check runs in float64 with a tight tolerance; no Neumann norm cap (``NORM_CAP none``, the
default: the authors' caps compare ||g|| with a bound, and g of a process's share differs).
"""

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from crbp_d2.rfpn.config import add_crbp_config  # noqa: E402
from crbp_d2.rfpn.train import launch as engine_launch  # noqa: E402

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import NaiveSyncBatchNorm, ShapeSpec  # noqa: E402
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from helpers import training_instances  # noqa: E402

# the heads run 3 steps: crbp warns that the state has not converged (irrelevant here)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")
REPO = Path(__file__).resolve().parents[1]
WIDTH, CLASSES, SIZE = 32, 3, 48
# RoIs per image; each process gets two images. "even": 3 + 3 RoIs, "empty": 0 + 5 RoIs.
SPLITS = {"even": (2, 1, 1, 2), "empty": (0, 0, 3, 2)}
METHODS = ("crbp", "bptt")
# The readout norms of the shipped configs: GN (configs/quick) and SyncBN (configs/Base-RFPN.yaml,
# the paper's), which on CPU becomes Detectron2's NaiveSyncBatchNorm(stats_mode="N").
NORMS = ("GN", "SyncBN")
CASES = [(m, n, s) for m in METHODS for n in NORMS for s in SPLITS]


def head_cfg(method: str, norm: str, fidelity: bool = False):
    cfg = get_cfg()
    add_crbp_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "RecurrentMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = WIDTH
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = CLASSES
    node = cfg.MODEL.ROI_MASK_HEAD.RECURRENT
    node.METHOD = method
    node.TIMESTEPS = 3
    node.NEUMANN_STEPS = 4
    node.CELL_NORM_GROUPS = 8
    node.READOUT_NORM = norm
    node.LCP_LAMBDA = 0.0  # every column sum is penalised: the LCP's gradient is not zero
    node.LCP_WEIGHT = 0.5  # large enough that a wrong LCP scaling shows
    # the gradient fidelity runs the readout (an all-reduce with SyncBN) on every process
    node.FIDELITY_PERIOD = 1 if fidelity else 0
    return cfg


def build_head(method: str, norm: str, fidelity: bool = False):
    torch.manual_seed(0)
    cfg = head_cfg(method, norm, fidelity)
    head = ROI_MASK_HEAD_REGISTRY.get("RecurrentMaskHead")(
        cfg, ShapeSpec(channels=WIDTH, height=14, width=14)
    )
    return head.double().train()


def batch(split: str):
    """Per-image training proposals (gt boxes, classes, masks) and the (R, C, 14, 14) float64
    RoI features of the whole batch."""
    generator = torch.Generator().manual_seed(1)
    images = training_instances(SPLITS[split], SIZE, CLASSES, torch.float64, generator)
    x = torch.randn(sum(SPLITS[split]), WIDTH, 14, 14, generator=generator, dtype=torch.float64)
    return x, images


def share(split: str, rank: int, world: int = 2):
    """Process ``rank``'s images and their RoI features."""
    x, images = batch(split)
    per = len(images) // world
    mine = images[rank * per : (rank + 1) * per]
    start = sum(len(i) for i in images[: rank * per])
    return x[start : start + sum(len(i) for i in mine)], mine


def _worker(rank: int, world: int, url: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=url, world_size=world, rank=rank)
    engine_launch._setup_local_process_group(world, world, 0)
    results = {}
    for method, norm, split in CASES:
        head = build_head(method, norm, fidelity=norm == "SyncBN")
        model = engine_launch.create_ddp_model(head, broadcast_buffers=False)  # as Detectron2
        x, images = share(split, rank, world)
        # two steps: a parameter left out of a step's reduction fails the next forward
        for iteration in range(2):
            head.zero_grad()
            with EventStorage(iteration):
                losses = model(x, images)
                sum(losses.values()).backward()
        results[(method, norm, split)] = {
            "grads": {n: p.grad.clone() for n, p in head.named_parameters()},
            "norm_type": type(head.readout_norm).__name__,
            "losses": sorted(losses),
        }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def reference_gradient(method: str, norm: str, split: str):
    """One process, the whole batch, the loss that 2-process DDP averages (module docstring)."""
    head = build_head(method, norm)
    x, images = batch(split)
    with EventStorage(0):
        losses = head(x, images)
    lcp = losses.get("loss_lcp", 0.0)
    total = losses["loss_mask"] + lcp / 2 if split == "even" else (losses["loss_mask"] + lcp) / 2
    total.backward()
    return {n: p.grad for n, p in head.named_parameters()}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Both processes' gradients for every case (one spawn of 2 gloo processes)."""
    out = tmp_path_factory.mktemp("ddp")
    url = f"tcp://127.0.0.1:{engine_launch._free_port()}"
    mp.spawn(_worker, args=(2, url, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("method,norm,split", CASES)
def test_two_gloo_processes_give_the_single_process_gradient(ddp_results, method, norm, split):
    got = [r[(method, norm, split)] for r in ddp_results]
    # on CPU the configs' SyncBN is Detectron2's NaiveSyncBatchNorm, on every process
    expected_type = "NaiveSyncBatchNorm" if norm == "SyncBN" else "GroupNorm"
    assert got[0]["norm_type"] == got[1]["norm_type"] == expected_type
    # the process with 0 RoIs returns the same losses (0, connected to every parameter)
    assert got[0]["losses"] == got[1]["losses"]
    reference = reference_gradient(method, norm, split)
    assert set(got[0]["grads"]) == set(reference)
    for name, expected in reference.items():
        for rank in range(2):
            grad = got[rank]["grads"][name]
            assert grad is not None, (rank, name)
            torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12, msg=name)
    assert any(g.abs().sum() > 0 for g in reference.values())


def test_readout_sync_norm_is_mapped_off_cuda_only():
    from crbp_d2.rfpn.modeling.recurrent_mask_head import readout_norm_for_device

    assert readout_norm_for_device("SyncBN", "cpu") == "naiveSyncBN_N"
    assert readout_norm_for_device("nnSyncBN", torch.device("cpu")) == "naiveSyncBN_N"
    assert readout_norm_for_device("SyncBN", "cuda") == "SyncBN"
    assert readout_norm_for_device("SyncBN", "cuda:1") == "SyncBN"
    for name in ("GN", "BN", "naiveSyncBN", ""):
        assert readout_norm_for_device(name, "cpu") == name
    # one process: the mapped norm is plain BatchNorm, as torch's SyncBatchNorm is
    head = build_head("bptt", "SyncBN")
    assert isinstance(head.readout_norm, NaiveSyncBatchNorm)


def test_train_net_runs_two_cpu_processes(tmp_path):
    """tools/train_net.py --num-gpus 2 MODEL.DEVICE cpu: 2 iterations of 2 images (one per
    process), the paper's SyncBN readout, a checkpoint at the end, then the evaluation on the
    synthetic validation set split over both processes (~20 s)."""
    from crbp_d2.cli import train_net

    config = REPO / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml"
    argv = [
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "--config-file",
        str(config),
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_MASK_HEAD.RECURRENT.READOUT_NORM",
        "SyncBN",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    assert train_net.main(argv) == 0
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 1
    assert "roi_heads.mask_head.readout_norm.running_mean" in final["model"]
    metrics = (tmp_path / "metrics.json").read_text().splitlines()
    assert any('"loss_mask"' in line and '"loss_lcp"' in line for line in metrics)
    assert '"panoptic_seg/PQ"' in metrics[-1] and '"segm/AP"' in metrics[-1]
    assert (tmp_path / "log.txt.rank1").exists()  # the second process logged on its own
    log = (tmp_path / "log.txt").read_text()
    assert "the readout uses 'naiveSyncBN_N'" in log
    assert "NaiveSyncBatchNorm" in log  # the model as printed


def test_lazyconfig_train_net_runs_two_cpu_processes(tmp_path):
    """tools/lazyconfig_train_net.py --num-gpus 2 with a CPU config (train.device cpu): gloo, as
    train_net.py; 2 iterations of 2 images (one per process), then the evaluation split over
    both processes (~20 s)."""
    from crbp_d2.cli import lazyconfig_train_net

    config = REPO / "configs" / "lazy" / "quick" / "R-FPN-R50-CRBP-synthetic-test.py"
    argv = ["--num-gpus", "2", "--dist-url", "auto", "--config-file", str(config),
            "train.max_iter=2", "dataloader.train.total_batch_size=2",
            f"train.output_dir={tmp_path}"]  # fmt: skip
    assert lazyconfig_train_net.main(argv) == 0
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 1
    metrics = (tmp_path / "metrics.json").read_text().splitlines()
    assert any('"loss_mask"' in line and '"loss_lcp"' in line for line in metrics)
    assert any('"panoptic_seg/PQ"' in line for line in metrics)
    assert (tmp_path / "log.txt.rank1").exists()  # the second process ran


def test_settings_that_cannot_run_on_several_processes_are_one_clear_error(capsys):
    """Before any process starts: torch's SyncBatchNorm in a Detectron2 module of a multi-process
    CPU run, the readout's naiveSyncBN (asserts on a process with 0 RoIs) on any device, a batch
    that does not split over the processes."""
    from crbp_d2.rfpn.config import check_sync_norms

    from crbp_d2.cli import train_net

    config = str(REPO / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml")
    with pytest.raises(SystemExit):
        train_net.main(["--num-gpus", "2", "--config-file", config, "MODEL.RESNETS.NORM", "SyncBN"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train_net.py: error: MODEL.RESNETS.NORM is 'SyncBN'")
    assert "naiveSyncBN_N" in err
    with pytest.raises(SystemExit):
        train_net.main(
            [
                "--num-gpus",
                "2",
                "--config-file",
                config,
                "MODEL.ROI_MASK_HEAD.RECURRENT.READOUT_NORM",
                "naiveSyncBN",
            ]
        )
    assert "READOUT_NORM 'naiveSyncBN' fails on a process" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the quick test config has 1 image per batch
        train_net.main(["--num-gpus", "2", "--config-file", config, "MODEL.DEVICE", "cpu"])
    assert "SOLVER.IMS_PER_BATCH (1) must be divisible by the number of processes (2" in (
        capsys.readouterr().err
    )
    cfg = head_cfg("crbp", "SyncBN")  # the readout's SyncBN is mapped, not refused
    cfg.MODEL.FPN.NORM = "naiveSyncBN_N"
    check_sync_norms(cfg, 2)
    cfg.MODEL.FPN.NORM = "SyncBN"
    check_sync_norms(cfg, 1)  # one process: plain BatchNorm
    cfg.MODEL.DEVICE = "cuda"
    check_sync_norms(cfg, 2)
    with pytest.raises(ValueError, match="MODEL.FPN.NORM is 'SyncBN'"):
        cfg.MODEL.DEVICE = "cpu"
        check_sync_norms(cfg, 2)
