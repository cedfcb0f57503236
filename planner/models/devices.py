"""Does a model fit a device tier, and how fast and how costly in battery would it run there?

Every figure here is an ESTIMATE for planning, labeled with its formula (``DeviceFit.formula``):

- memory needed = weights (the graph's bytes on disk, mapped or loaded whole)
  + KV cache (``kv_bytes_per_token`` x the workload's p95 context)
  + prefill logits (``logits_bytes_per_token`` x the p95 prompt, taken as the p95 context less
  the answer: the prefill returns a vocabulary's logits for every prompt position)
  + runtime overhead (:data:`RUNTIME_OVERHEAD_MB` + :data:`ACTIVATION_SHARE` of the weights);
  it fits when that is within the device's usable RAM. The local runtime sizes every generator
  to its request (:mod:`planner.models.runtime`), and refuses one whose KV cache and logits
  (:func:`generation_bytes`, the same formula) exceed the memory available.
- decode tokens/s: decoding reads every weight once per token, so it scales with memory
  bandwidth. With a decode speed measured on this host for the model:
  ``host_tok_s x device_bw / host_bw`` ("host-scaled"); without one, the roofline
  ``device_bw x ROOFLINE_EFFICIENCY / (weights + KV at that context)`` ("roofline"). A device
  with a ``calibration`` (a figure measured on the real device) uses its effective bandwidth
  ``tok_s x bytes_per_token`` in place of the nominal one ("calibrated").
- prefill tokens/s: the host's prompt-processing speed scaled the same way, else
  ``PREFILL_SPEEDUP`` x decode.
- a decode speed measured on the real device for this very model (``device_tokens_per_s`` of the
  candidate) replaces all of the above ("measured on the device").
- latency on the device = latency measured on this host x ``latency_factor``, where
  ``latency_factor = host decode tok/s / device decode tok/s`` (the host's speed measured for the
  model, else its roofline): the whole request is assumed to scale like decoding does.
- energy per request = sustained power x (prompt / prefill + output / decode) seconds;
  battery drain per hour = energy x requests per hour / battery capacity.

The table of devices is ``planner/data/devices.json``; "this host" is measured
(:func:`measure_host`: RAM via psutil, bandwidth from a numpy copy, cached).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from planner.errors import ConfigError
from planner.models.folder import ModelInfo

RUNTIME_OVERHEAD_MB = 300.0  # onnxruntime + tokenizer + app process baseline
ACTIVATION_SHARE = 0.10  # activations and scratch buffers, relative to the weights
ROOFLINE_EFFICIENCY = 0.6  # share of peak bandwidth decode reaches in practice
PREFILL_SPEEDUP = 8.0  # prompt tokens/s relative to decode when nothing was measured
HOST_ID = "host"
MB = 1024 * 1024
GB = 1e9  # bandwidths are decimal GB/s


@dataclass(frozen=True)
class Calibration:
    """A decode speed measured on the real device, for some model."""

    decode_tokens_per_s: float
    bytes_per_token: float  # weights + KV read per token by that model
    source: str = ""

    @property
    def effective_bandwidth_gbs(self) -> float:
        return self.decode_tokens_per_s * self.bytes_per_token / GB


@dataclass(frozen=True)
class Device:
    """One target device tier."""

    id: str
    name: str
    ram_gb: float
    usable_ram_gb: float
    bandwidth_gbs: float
    sustained_power_w: float | None = None
    battery_wh: float | None = None
    memory: str = ""
    calibration: Calibration | None = None
    measured: bool = False  # True for "this host"


@dataclass(frozen=True)
class HostMeasurement:
    """This machine, measured: RAM from psutil, bandwidth from a numpy copy benchmark."""

    total_ram_gb: float
    available_ram_gb: float
    bandwidth_gbs: float
    cpu_count: int
    machine: str
    measured_at: float


@dataclass(frozen=True)
class DeviceFit:
    """One model on one device (estimates; see ``formula``)."""

    model: str
    device: str
    device_name: str
    fits: bool
    required_mb: float
    usable_mb: float
    headroom_mb: float
    weights_mb: float
    kv_cache_mb: float
    overhead_mb: float
    context_tokens: int
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    seconds_per_request: float
    energy_j_per_request: float | None
    battery_pct_per_hour: float | None
    basis: str  # "host-scaled", "roofline", "calibrated", "measured" or "measured on the device"
    formula: str
    estimate: bool = True
    latency_factor: float = 1.0  # device latency = host latency x this
    latency_basis: str = "this host"
    logits_mb: float = 0.0  # the prefill's logits for the p95 prompt


def _device_from(entry: Any, where: str) -> Device:
    if not isinstance(entry, dict):
        raise ConfigError(where, "each device must be an object")
    try:
        cal = entry.get("calibration")
        calibration = (
            Calibration(
                decode_tokens_per_s=float(cal["decode_tokens_per_s"]),
                bytes_per_token=float(cal["bytes_per_token"]),
                source=str(cal.get("source", "")),
            )
            if cal
            else None
        )
        device = Device(
            id=str(entry["id"]),
            name=str(entry["name"]),
            ram_gb=float(entry["ram_gb"]),
            usable_ram_gb=float(entry["usable_ram_gb"]),
            bandwidth_gbs=float(entry["bandwidth_gbs"]),
            sustained_power_w=(
                float(entry["sustained_power_w"])
                if entry.get("sustained_power_w") is not None
                else None
            ),
            battery_wh=float(entry["battery_wh"]) if entry.get("battery_wh") is not None else None,
            memory=str(entry.get("memory", "")),
            calibration=calibration,
        )
    except KeyError as exc:
        raise ConfigError(where, f"field {exc.args[0]} is missing") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, f"a field has the wrong type: {exc}") from exc
    if device.usable_ram_gb <= 0 or device.bandwidth_gbs <= 0:
        raise ConfigError(where, "usable_ram_gb and bandwidth_gbs must be positive")
    return device


def load_devices(host: HostMeasurement | None = None, path: Path | None = None) -> list[Device]:
    """The device table (``path`` or the shipped one), plus "this host" when ``host`` is given."""
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, f"cannot read: {exc}") from exc
    else:
        source = "planner/data/devices.json"
        text = resources.files("planner").joinpath("data/devices.json").read_text("utf-8")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(source, f"not valid JSON: {exc}") from exc
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(source, "field devices (a list) is missing")
    devices = [_device_from(e, f"{source}: devices[{i}]") for i, e in enumerate(entries)]
    if host is not None:
        devices.append(host_device(host))
    return devices


def host_device(host: HostMeasurement) -> Device:
    """This machine as a device tier: usable RAM is what was available when measured."""
    return Device(
        id=HOST_ID,
        name=f"this host ({host.cpu_count} cores, {host.total_ram_gb:.0f} GB)",
        ram_gb=host.total_ram_gb,
        usable_ram_gb=host.available_ram_gb,
        bandwidth_gbs=host.bandwidth_gbs,
        memory="measured (numpy copy)",
        measured=True,
    )


def device_by_id(devices: list[Device], device_id: str) -> Device:
    for device in devices:
        if device.id == device_id:
            return device
    known = ", ".join(d.id for d in devices)
    raise ConfigError("objectives.device", f"unknown device {device_id!r} (known: {known})")


def measure_bandwidth(size_mb: int = 64, repeats: int = 5) -> float:
    """Copy bandwidth in GB/s (bytes read + written over the best of ``repeats`` copies)."""
    src = np.ones(size_mb * MB // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best / GB


_host_cache: dict[str, HostMeasurement] = {}
_host_lock = threading.Lock()


def _machine_key() -> str:
    return (
        f"{platform.node()}|{platform.machine()}|{os.cpu_count()}|{psutil.virtual_memory().total}"
    )


def measure_host(cache_file: Path | None = None, max_age_s: float = 7 * 86400) -> HostMeasurement:
    """This host's RAM and memory bandwidth. The bandwidth is measured once per process (about
    0.2 s) and kept in ``cache_file`` (if given) for ``max_age_s`` on the same machine; the
    available RAM is read afresh on every call."""
    key = _machine_key()
    with _host_lock:
        host = _host_cache.get(key)
        stored = _read_host_cache(cache_file, key, max_age_s) if cache_file is not None else None
        if host is None:
            host = stored
        if host is None:
            mem = psutil.virtual_memory()
            host = HostMeasurement(
                total_ram_gb=mem.total / GB,
                available_ram_gb=mem.available / GB,
                bandwidth_gbs=measure_bandwidth(),
                cpu_count=os.cpu_count() or 1,
                machine=f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
                measured_at=time.time(),
            )
        else:
            host = replace(host, available_ram_gb=psutil.virtual_memory().available / GB)
        _host_cache[key] = host
        if cache_file is not None and (stored is None or stored.measured_at != host.measured_at):
            _write_host_cache(cache_file, key, host)
        return host


def _write_host_cache(cache_file: Path, key: str, host: HostMeasurement) -> None:
    """Best effort: a folder that cannot be written only costs the next run a measurement."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, **asdict(host)}, indent=2))
        tmp.replace(cache_file)
    except OSError:
        pass


def _read_host_cache(cache_file: Path, key: str, max_age_s: float) -> HostMeasurement | None:
    try:
        data = json.loads(cache_file.read_text())
        if data.get("key") != key or time.time() - float(data["measured_at"]) >= max_age_s:
            return None
        return HostMeasurement(**{k: v for k, v in data.items() if k != "key"})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, stale or foreign: measured again


def generation_bytes(
    info: ModelInfo, *, prompt_tokens: int, max_length: int, batch_size: int = 1
) -> tuple[int, int]:
    """(KV cache, prefill logits) bytes of one onnxruntime-genai generator: the KV cache holds
    ``max_length`` positions of every layer per sequence (allocated whole when the generator is
    made), and the prompt's prefill returns logits for each of its positions."""
    kv = info.kv_bytes_per_token * max_length * batch_size
    logits = info.logits_bytes_per_token * prompt_tokens * batch_size
    return kv, logits


def memory_needed_mb(
    info: ModelInfo, context_tokens: int, prompt_tokens: int = 0
) -> tuple[float, float, float, float]:
    """(weights, KV cache, prefill logits, overhead) in MB for ``context_tokens`` of context of
    which ``prompt_tokens`` are the prompt."""
    weights = info.weight_bytes / MB
    kv, logits = generation_bytes(info, prompt_tokens=prompt_tokens, max_length=context_tokens)
    overhead = RUNTIME_OVERHEAD_MB + ACTIVATION_SHARE * weights
    return weights, kv / MB, logits / MB, overhead


def estimate_fit(
    info: ModelInfo,
    device: Device,
    host: HostMeasurement,
    *,
    context_tokens: int,
    prompt_tokens: int | None = None,
    output_tokens: int = 128,
    requests_per_hour: float = 60.0,
    host_decode_tokens_per_s: float | None = None,
    host_prefill_tokens_per_s: float | None = None,
    device_decode_tokens_per_s: float | None = None,
) -> DeviceFit:
    """Fit, decode speed, latency factor and energy of one model on one device (estimates,
    unless ``device_decode_tokens_per_s`` was measured there)."""
    if context_tokens < 1 or output_tokens < 1:
        raise ValueError("context_tokens and output_tokens must be >= 1")
    prompt = prompt_tokens if prompt_tokens is not None else max(context_tokens - output_tokens, 1)
    weights, kv, logits, overhead = memory_needed_mb(
        info, context_tokens, max(context_tokens - output_tokens, 1)
    )
    required = weights + kv + logits + overhead
    usable = device.usable_ram_gb * 1000 * 1000 * 1000 / MB
    bytes_per_token = info.weight_bytes + info.kv_bytes_per_token * context_tokens
    bandwidth = device.bandwidth_gbs
    basis = "roofline"
    if device.calibration is not None:
        bandwidth = device.calibration.effective_bandwidth_gbs
        basis = "calibrated"
    if device_decode_tokens_per_s and not device.measured:
        decode = device_decode_tokens_per_s
        basis = "measured on the device"
        formula = "decode tok/s measured on the device (the candidate's device_tokens_per_s)"
    elif device.measured and host_decode_tokens_per_s:
        decode = host_decode_tokens_per_s
        basis = "measured"
        formula = "decode tok/s measured on this host"
    elif basis == "calibrated":
        decode = bandwidth * GB / bytes_per_token
        formula = (
            "decode tok/s = calibrated bandwidth (measured tok/s x bytes/token on the device) "
            "/ (weights + KV cache at context)"
        )
    elif host_decode_tokens_per_s:
        decode = host_decode_tokens_per_s * bandwidth / host.bandwidth_gbs
        basis = "host-scaled"
        formula = "decode tok/s = host decode tok/s x device bandwidth / host bandwidth"
    else:
        decode = bandwidth * GB * ROOFLINE_EFFICIENCY / bytes_per_token
        formula = (
            f"decode tok/s = device bandwidth x {ROOFLINE_EFFICIENCY} "
            "/ (weights + KV cache at context)"
        )
    if host_prefill_tokens_per_s:
        prefill = host_prefill_tokens_per_s * (
            1.0 if device.measured else bandwidth / host.bandwidth_gbs
        )
    else:
        prefill = decode * PREFILL_SPEEDUP
    seconds = prompt / prefill + output_tokens / decode
    host_decode = host_decode_tokens_per_s or (
        host.bandwidth_gbs * GB * ROOFLINE_EFFICIENCY / bytes_per_token
    )
    if device.measured:
        factor, latency_basis = 1.0, "measured on this host"
    else:
        factor = host_decode / decode
        source = "measured" if host_decode_tokens_per_s else "roofline"
        latency_basis = (
            f"host x {factor:.2f} (host decode {host_decode:.1f} tok/s, {source}, / device "
            f"{decode:.1f} tok/s, {basis})"
        )
    energy = device.sustained_power_w * seconds if device.sustained_power_w else None
    drain = (
        energy * requests_per_hour / (device.battery_wh * 3600) * 100
        if energy is not None and device.battery_wh
        else None
    )
    formula += (
        f"; memory = weights + KV x {context_tokens} tokens + logits x "
        f"{max(context_tokens - output_tokens, 1)} prompt tokens + {RUNTIME_OVERHEAD_MB:.0f} MB "
        f"+ {ACTIVATION_SHARE:.0%} of weights; device latency = host latency x host decode "
        "tok/s / device decode tok/s; energy = sustained W x "
        "(prompt/prefill + output/decode); battery %/h = J/request x requests/h / (Wh x 3600)"
    )
    return DeviceFit(
        model=info.path,
        device=device.id,
        device_name=device.name,
        fits=required <= usable,
        required_mb=required,
        usable_mb=usable,
        headroom_mb=usable - required,
        weights_mb=weights,
        kv_cache_mb=kv,
        logits_mb=logits,
        overhead_mb=overhead,
        context_tokens=context_tokens,
        decode_tokens_per_s=decode,
        prefill_tokens_per_s=prefill,
        seconds_per_request=seconds,
        energy_j_per_request=energy,
        battery_pct_per_hour=drain,
        basis=basis,
        formula=formula,
        latency_factor=factor,
        latency_basis=latency_basis,
    )


def estimate_fits(
    info: ModelInfo,
    devices: list[Device],
    host: HostMeasurement,
    *,
    context_tokens: int,
    prompt_tokens: int | None = None,
    output_tokens: int = 128,
    requests_per_hour: float = 60.0,
    host_decode_tokens_per_s: float | None = None,
    host_prefill_tokens_per_s: float | None = None,
) -> list[DeviceFit]:
    """:func:`estimate_fit` for every device."""
    return [
        estimate_fit(
            info,
            device,
            host,
            context_tokens=context_tokens,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            requests_per_hour=requests_per_hour,
            host_decode_tokens_per_s=host_decode_tokens_per_s,
            host_prefill_tokens_per_s=host_prefill_tokens_per_s,
        )
        for device in devices
    ]
