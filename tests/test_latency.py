"""pipelines/latency.py: per-block latency tables (paper Algorithm 1)."""

import json

import pytest
import torch

from pipelines import latency
from pipelines.latency import FORMAT, LatencyTable, host_description
from pipelines.tiny import tiny_efficient_unet, tiny_stock_unet
from pipelines.unet_efficient import stage_level


@pytest.fixture(scope="module")
def unet():
    return tiny_efficient_unet(0)


@pytest.fixture(scope="module")
def table(unet):
    return LatencyTable.measure(unet, 16, 16, batch=2, context_len=5, warmup=0, repeats=1)


def test_measure_prices_every_block_and_the_estimate_adds_them(unet, table):
    assert table.missing(unet, 16, 16) == [] and table.batch == 2 and table.dtype == "float32"
    assert table.source == "measured with PyTorch on cpu" and table.device == host_description()
    est = table.estimate(unet, 16, 16)
    assert set(est["blocks_ms"]) == {str(b) for b in unet.blocks()}
    assert est["total_ms"] == pytest.approx(sum(est["blocks_ms"].values()) + est["fixed_ms"])
    assert all(v > 0 for v in table.entries.values()) and est["source"].startswith("estimate from latency table")


def test_a_derived_architecture_is_priced_from_the_same_table(unet, table):
    removable = unet.removable_blocks()[0]
    smaller = unet.remove_blocks([removable])
    est, est_small = table.estimate(unet, 16, 16), table.estimate(smaller, 16, 16)
    assert est_small["total_ms"] == pytest.approx(est["total_ms"] - est["blocks_ms"][str(removable)])
    with pytest.raises(ValueError, match="has no entry for"):
        table.estimate(unet, 32, 32)  # another resolution: other signatures


def test_measure_times_through_pipelines_timing(unet, monkeypatch):
    """Each timed call goes through ``pipelines.timing.time_ms`` with the model's device (which syncs CUDA and MPS)."""
    calls = []
    monkeypatch.setattr(latency, "time_ms", lambda fn, device: (calls.append(device), fn(), 1.5)[2])
    existing = LatencyTable(entries={}, device="phone", source="hand-made")
    t = LatencyTable.measure(unet, 16, 16, batch=1, context_len=5, warmup=0, repeats=3, existing=existing)
    assert set(t.entries.values()) == {1.5} and len(calls) == 3 * len(t.entries)
    assert set(calls) == {torch.device("cpu")} and t.device == "phone" and t.source == "hand-made"
    again = LatencyTable.measure(unet, 16, 16, batch=1, context_len=5, warmup=0, repeats=3, existing=t)
    assert again.entries == t.entries and len(calls) == 3 * len(t.entries)  # nothing measured twice


def test_json_round_trip_keeps_extra_fields(table, tmp_path):
    table.extra = {"note": "phone run"}
    path = tmp_path / "table.json"
    table.save(str(path))
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["note"] == "phone run"
    loaded = LatencyTable.load(str(path))
    assert loaded.to_dict() == table.to_dict()


@pytest.mark.parametrize("content, match", [
    ("{oops", "Cannot read latency table"),
    (json.dumps({"format": "other"}), "is not a latency table"),
    (json.dumps({"format": FORMAT, "entries": {"RB": -1}}), "non-negative milliseconds"),
])  # fmt: skip
def test_bad_table_files(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        LatencyTable.load(str(path))


def test_stock_unet_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="Convert a stock SD-1.x UNet"):
        LatencyTable.measure(tiny_stock_unet(0), 16, 16)
    with pytest.raises(ValueError, match="must be a multiple of 8"):
        LatencyTable.measure(tiny_efficient_unet(0), 12, 16)


def test_stage_levels():
    assert [stage_level(s, 4) for s in ("down0", "down3", "mid", "up0", "up3")] == [0, 3, 3, 3, 0]
    assert [stage_level(s, 2) for s in ("down0", "down1", "mid", "up0", "up1")] == [0, 1, 1, 1, 0]
