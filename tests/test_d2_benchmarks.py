"""The R-FPN benchmark (crbp_d2.rfpn.experiments.benchmark and its program), tiny, on CPU."""

import json
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.experiments.benchmark import parse_variant, variant_opts  # noqa: E402

from crbp_d2.cli import benchmark_rfpn  # noqa: E402

CONFIG = str(
    Path(__file__).resolve().parents[1] / "configs/quick/R-FPN-R50-CRBP-synthetic-test.yaml"
)


def test_variant_names():
    assert parse_variant("FPN") == ("feedforward", 0)
    assert parse_variant("CRBP-20") == ("crbp", 20)
    assert parse_variant("TBPTT-3") == ("tbptt", 3)
    for bad in ("CRBP", "crbp", "FPN-3x", "LSTM-5", "CRBP-"):
        with pytest.raises(ValueError, match="unknown variant"):
            parse_variant(bad)
    assert variant_opts("FPN") == ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
    assert variant_opts("fpn") == variant_opts("FPN")
    assert parse_variant("bptt-5") == ("bptt", 5) and parse_variant("CJFB-20") == ("cjfb", 20)
    opts = dict(zip(*[iter(variant_opts("BPTT-3"))] * 2))
    assert opts == {
        "MODEL.ROI_MASK_HEAD.NAME": "RecurrentMaskHead",
        "MODEL.ROI_MASK_HEAD.RECURRENT.METHOD": "bptt",
        "MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS": "3",
    }


def test_benchmark_rfpn_rejects_unknown_variant(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_rfpn.main(["--variants", "FPN", "CRBP"])
    assert exit_info.value.code == 2 and "unknown variant 'CRBP'" in capsys.readouterr().err


def test_benchmark_rfpn_writes_records_table_and_plot(tmp_path):
    argv = [
        "--config-file", CONFIG, "--variants", "FPN", "CRBP-2", "--size", "64", "--iters", "1",
        "--instances", "2", "--threads", "1", "--device", "cpu",
        "--json", str(tmp_path / "rfpn.json"), "--plot", str(tmp_path / "plots" / "rfpn.png"),
    ]  # fmt: skip
    assert benchmark_rfpn.main(argv) == 0
    records = json.loads((tmp_path / "rfpn.json").read_text())
    assert [(r["variant"], r["method"], r["steps"]) for r in records] == [
        ("FPN", "feedforward", 0),
        ("CRBP-2", "crbp", 2),
    ]
    for r in records:
        assert r["peak_kind"] == "cpu_peak_rss" and r["threads"] == 1
        assert r["peak_bytes"] >= r["step_peak_bytes"] >= 0 and r["seconds_per_iter"] > 0
    # same seed, same backbone/RPN/box head: both heads see the same RoIs
    assert records[0]["mask_rois"] == records[1]["mask_rois"] > 0
    assert records[0]["parameters"] != records[1]["parameters"]
    table = (tmp_path / "rfpn.md").read_text()
    assert "| CRBP-2 | " in table and "1.00x" in table and "cpu_peak_rss" in table
    assert (tmp_path / "plots" / "rfpn.png").stat().st_size > 1000
