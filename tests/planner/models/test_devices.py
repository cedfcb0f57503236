"""Device tiers: the table, this host's measurement, fit / speed / energy estimates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner.errors import ConfigError
from planner.models import devices
from planner.models.devices import (
    ACTIVATION_SHARE,
    MB,
    PREFILL_SPEEDUP,
    ROOFLINE_EFFICIENCY,
    RUNTIME_OVERHEAD_MB,
    Calibration,
    HostMeasurement,
    device_by_id,
    estimate_fit,
    estimate_fits,
    load_devices,
    measure_host,
)
from planner.models.folder import ModelInfo, inspect_model

HOST = HostMeasurement(
    total_ram_gb=32.0,
    available_ram_gb=20.0,
    bandwidth_gbs=20.0,
    cpu_count=2,
    machine="test",
    measured_at=0.0,
)


def model(weight_gb: float, kv_bytes_per_token: int = 131072) -> ModelInfo:
    """A model of a given size (a Phi-4-mini INT4 is about 2.5 GB with 128 KB/token KV)."""
    return ModelInfo(
        path=f"model-{weight_gb}gb",
        model_type="phi3",
        parameters=int(weight_gb * 2e9),
        quantization="int4 (MatMulNBits, block 32)",
        quant_ops={"MatMulNBits": 129, "MatMulInteger": 0, "MatMul(float)": 0},
        weight_dtype="float32",
        bytes_on_disk=int(weight_gb * 1e9) + 10_000,
        weight_bytes=int(weight_gb * 1e9),
        context_length=131072,
        vocab_size=200064,
        hidden_size=3072,
        layers=32,
        attention_heads=24,
        kv_heads=8,
        head_size=128,
        kv_bytes_per_token=kv_bytes_per_token,
        chat_template=True,
    )


def test_table_has_the_required_tiers_and_this_host() -> None:
    devices = load_devices(HOST)
    ids = [d.id for d in devices]
    assert ids == [
        "snapdragon-8-gen-3",
        "apple-a17-pro",
        "snapdragon-7s-gen-2",
        "dimensity-9300",
        "host",
    ]
    sd8 = device_by_id(devices, "snapdragon-8-gen-3")
    assert sd8.ram_gb == 16 and 0 < sd8.usable_ram_gb < sd8.ram_gb
    assert all(d.sustained_power_w and d.battery_wh for d in devices if not d.measured)
    host = device_by_id(devices, "host")
    assert host.measured and host.usable_ram_gb == 20.0 and host.bandwidth_gbs == 20.0
    with pytest.raises(ConfigError, match="unknown device 'pixel-1'"):
        device_by_id(devices, "pixel-1")


def test_fit_is_weights_plus_kv_plus_overhead_within_usable_ram() -> None:
    info = model(2.5)
    sd8, a17, sd7s = (
        device_by_id(load_devices(), i)
        for i in ("snapdragon-8-gen-3", "apple-a17-pro", "snapdragon-7s-gen-2")
    )
    fit = estimate_fit(info, sd8, HOST, context_tokens=4096)
    weights = 2.5e9 / MB
    kv = 131072 * 4096 / MB
    assert fit.weights_mb == pytest.approx(weights)
    assert fit.kv_cache_mb == pytest.approx(kv)
    assert fit.overhead_mb == pytest.approx(RUNTIME_OVERHEAD_MB + ACTIVATION_SHARE * weights)
    assert fit.required_mb == pytest.approx(weights + kv + fit.overhead_mb)
    assert fit.usable_mb == pytest.approx(sd8.usable_ram_gb * 1e9 / MB)
    assert fit.fits and fit.headroom_mb > 0
    # a 3 GB budget holds neither 2.5 GB of weights plus 512 MB of KV plus the runtime...
    assert not estimate_fit(info, sd7s, HOST, context_tokens=4096).fits
    # ...and a long context can push a model off a device it fits at a short one
    assert estimate_fit(info, a17, HOST, context_tokens=1024).fits
    assert not estimate_fit(info, a17, HOST, context_tokens=8192).fits


def test_decode_speed_estimates_and_their_basis() -> None:
    info = model(2.0)
    sd8 = device_by_id(load_devices(), "snapdragon-8-gen-3")
    bytes_per_token = 2.0e9 + 131072 * 1000
    roofline = estimate_fit(info, sd8, HOST, context_tokens=1000)
    assert roofline.basis == "roofline"
    assert roofline.decode_tokens_per_s == pytest.approx(
        76.8e9 * ROOFLINE_EFFICIENCY / bytes_per_token
    )
    assert roofline.prefill_tokens_per_s == pytest.approx(
        roofline.decode_tokens_per_s * PREFILL_SPEEDUP
    )
    assert roofline.estimate and "bandwidth" in roofline.formula
    scaled = estimate_fit(
        info,
        sd8,
        HOST,
        context_tokens=1000,
        host_decode_tokens_per_s=10.0,
        host_prefill_tokens_per_s=100.0,
    )
    assert scaled.basis == "host-scaled"
    assert scaled.decode_tokens_per_s == pytest.approx(10.0 * 76.8 / 20.0)
    assert scaled.prefill_tokens_per_s == pytest.approx(100.0 * 76.8 / 20.0)
    assert "host bandwidth" in scaled.formula
    calibrated_device = dataclasses.replace(
        sd8, calibration=Calibration(decode_tokens_per_s=12.0, bytes_per_token=2.5e9)
    )
    calibrated = estimate_fit(
        info, calibrated_device, HOST, context_tokens=1000, host_decode_tokens_per_s=10.0
    )
    assert calibrated.basis == "calibrated"
    assert calibrated.decode_tokens_per_s == pytest.approx(12.0 * 2.5e9 / bytes_per_token)
    host_fit = estimate_fit(
        info, load_devices(HOST)[-1], HOST, context_tokens=1000, host_decode_tokens_per_s=10.0
    )
    assert host_fit.basis == "measured" and host_fit.decode_tokens_per_s == 10.0


def test_energy_and_battery_drain_follow_their_formula() -> None:
    info = model(1.0)
    a17 = device_by_id(load_devices(), "apple-a17-pro")
    fit = estimate_fit(
        info,
        a17,
        HOST,
        context_tokens=600,
        prompt_tokens=500,
        output_tokens=100,
        requests_per_hour=120,
        host_decode_tokens_per_s=20.0,
        host_prefill_tokens_per_s=200.0,
    )
    decode = 20.0 * 51.2 / 20.0
    prefill = 200.0 * 51.2 / 20.0
    seconds = 500 / prefill + 100 / decode
    assert fit.seconds_per_request == pytest.approx(seconds)
    assert fit.energy_j_per_request == pytest.approx(5.0 * seconds)
    assert fit.battery_pct_per_hour == pytest.approx(5.0 * seconds * 120 / (12.7 * 3600) * 100)
    host = estimate_fit(info, load_devices(HOST)[-1], HOST, context_tokens=600)
    assert host.energy_j_per_request is None and host.battery_pct_per_hour is None


def test_estimates_for_a_real_tiny_model(tiny_int4_dir: Path) -> None:
    info = inspect_model(tiny_int4_dir)
    fits = estimate_fits(info, load_devices(HOST), HOST, context_tokens=256)
    assert len(fits) == 5 and all(f.fits for f in fits)
    assert fits[0].weights_mb == pytest.approx(info.weight_bytes / MB)


def test_bad_device_table_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"devices": [{"id": "x", "name": "X", "ram_gb": 8}]}))
    with pytest.raises(ConfigError, match=r"devices\[0\]: field usable_ram_gb is missing"):
        load_devices(path=path)
    path.write_text("[")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_devices(path=path)


def test_measure_host_is_real_and_cached(tmp_path: Path) -> None:
    cache = tmp_path / "host.json"
    host = measure_host(cache)
    assert host.total_ram_gb > 0.5
    assert 0 < host.available_ram_gb <= host.total_ram_gb
    assert 0.1 < host.bandwidth_gbs < 2000
    assert host.cpu_count >= 1
    again = measure_host(cache)  # once per process; the available RAM read afresh
    assert (again.bandwidth_gbs, again.measured_at) == (host.bandwidth_gbs, host.measured_at)
    stored = json.loads(cache.read_text())
    assert stored["bandwidth_gbs"] == host.bandwidth_gbs
    devices._host_cache.clear()  # as in a new process: the file answers, nothing is measured
    assert measure_host(cache).measured_at == host.measured_at
    stored["measured_at"] -= 8 * 86400  # a week old: measured again
    cache.write_text(json.dumps(stored))
    devices._host_cache.clear()
    assert measure_host(cache).measured_at > host.measured_at


def test_cli_devices_measures_this_host_and_scales(tiny_int4_dir: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli_models import app

    args = ["devices", str(tiny_int4_dir), "--context", "128", "--json"]
    measured = CliRunner().invoke(app, args)
    assert measured.exit_code == 0, measured.output
    rows = json.loads(measured.stdout)["estimates"]
    by_device = {r["device"]: r for r in rows}
    assert by_device["host"]["basis"] == "measured"
    assert by_device["snapdragon-8-gen-3"]["basis"] == "host-scaled"
    host_bw = json.loads(measured.stdout)["host"]["bandwidth_gbs"]
    assert by_device["snapdragon-8-gen-3"]["decode_tokens_per_s"] == pytest.approx(
        by_device["host"]["decode_tokens_per_s"] * 76.8 / host_bw
    )
    roofline = CliRunner().invoke(app, [*args, "--no-measure"])
    assert {r["basis"] for r in json.loads(roofline.stdout)["estimates"]} == {"roofline"}
