"""Model folders: checking, inspecting, fingerprinting; the tiny graph against a numpy reference;
quantized variants; the `models` CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from flows.cli_models import app as models_app
from planner.errors import ModelFolderError
from planner.models.folder import fingerprint, inspect_model, open_model_folder
from planner.models.quantize import quantize_model_folder
from planner.models.tiny import TinySpec, build_graph, random_weights, weight_shapes


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def expected_parameters(vocab: int) -> int:
    spec = TinySpec(vocab_size=vocab, hidden=64, layers=2, heads=4, context_length=256)
    return sum(int(np.prod(s)) for s in weight_shapes(spec).values())


def test_inspect_float_model(tiny_model_dir: Path) -> None:
    info = inspect_model(tiny_model_dir)
    assert info.parameters == expected_parameters(info.vocab_size)
    assert info.quantization == "float32"
    assert info.quant_ops == {"MatMulNBits": 0, "MatMulInteger": 0, "MatMul(float)": 13}
    assert info.context_length == 256
    assert info.vocab_size == 512
    assert (info.layers, info.hidden_size, info.attention_heads, info.head_size) == (2, 64, 4, 16)
    assert info.kv_bytes_per_token == 2 * 2 * 4 * 16 * 4
    assert info.chat_template is True
    files = [p for p in tiny_model_dir.iterdir() if p.is_file()]
    assert info.bytes_on_disk == sum(p.stat().st_size for p in files)
    weights = tiny_model_dir / "model.onnx.data"
    assert (
        info.weight_bytes == weights.stat().st_size + (tiny_model_dir / "model.onnx").stat().st_size
    )
    # float32 weights live outside the graph (a few small norms stay inside)
    assert weights.stat().st_size >= 0.99 * 4 * info.parameters


def test_inspect_quantized_variants(
    tiny_model_dir: Path, tiny_int8_dir: Path, tiny_int4_dir: Path
) -> None:
    fp32, int8, int4 = (inspect_model(d) for d in (tiny_model_dir, tiny_int8_dir, tiny_int4_dir))
    # the logical parameter count survives quantization
    assert fp32.parameters == int8.parameters == int4.parameters
    assert int8.quantization == "int8 (MatMulInteger, dynamic)"
    assert int8.quant_ops["MatMulInteger"] == 13 and int8.quant_ops["MatMul(float)"] == 0
    assert int4.quantization == "int4 (MatMulNBits, block 32)"
    assert int4.quant_ops["MatMulNBits"] == 13
    assert int4.weight_bytes < int8.weight_bytes < fp32.weight_bytes
    card = json.loads((tiny_int4_dir / "planner_model.json").read_text())
    assert card["quantized"]["to"] == "int4"
    assert card["quantized"]["source_fingerprint"] == fingerprint(tiny_model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "genai_config.json"):
        assert (tiny_int4_dir / name).read_bytes() == (tiny_model_dir / name).read_bytes()


def test_chat_template_absent_is_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny_model_dir, tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert inspect_model(folder).chat_template is False
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert inspect_model(folder).chat_template is True


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("genai_config.json", "missing genai_config.json"),
        ("model.onnx", "missing model.onnx"),
        ("tokenizer.json", "missing tokenizer.json or tokenizer.model"),
        ("tokenizer_config.json", "missing tokenizer_config.json"),
    ],
)
def test_missing_file_is_named(
    tiny_model_dir: Path, tmp_path: Path, remove: str, named: str
) -> None:
    folder = copy_of(tiny_model_dir, tmp_path)
    (folder / remove).unlink()
    with pytest.raises(ModelFolderError, match=named) as err:
        inspect_model(folder)
    assert err.value.path == str(folder)


def test_not_a_folder_and_bad_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no such directory"):
        open_model_folder(tmp_path / "nope")
    file = tmp_path / "file.onnx"
    file.write_text("x")
    with pytest.raises(ModelFolderError, match="not a directory"):
        open_model_folder(file)
    folder = copy_of(tiny_model_dir, tmp_path)
    (folder / "genai_config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"genai_config\.json: not valid JSON"):
        open_model_folder(folder)
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": {}}}))
    with pytest.raises(ModelFolderError, match=r"model\.decoder\.filename"):
        open_model_folder(folder)


def test_fingerprint_is_stable_and_sees_changes(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny_model_dir, tmp_path)
    first = fingerprint(folder)
    assert len(first) == 16
    assert fingerprint(folder) == first
    assert fingerprint(tiny_model_dir) == first  # content, not location
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["top_k"] = 5
    (folder / "genai_config.json").write_text(json.dumps(config))
    assert fingerprint(folder) != first


def rewrite_weights_in_place(folder: Path) -> None:
    """A retrain of the same architecture: other weights, same file sizes, same graph."""
    data = folder / "model.onnx.data"
    size = data.stat().st_size
    floats = np.frombuffer(data.read_bytes(), dtype=np.float32).copy()
    floats *= np.float32(0.5)
    with data.open("r+b") as fh:  # in place: same inode
        fh.write(floats.tobytes())
    assert data.stat().st_size == size


def test_fingerprint_sees_a_weights_only_change(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = copy_of(tiny_model_dir, tmp_path)
    before = fingerprint(folder)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    graph = (folder / "model.onnx").read_bytes()
    data = folder / "model.onnx.data"
    times = (data.stat().st_atime_ns, data.stat().st_mtime_ns)
    rewrite_weights_in_place(folder)
    os.utime(data, ns=times)  # even with its old mtime put back (as `cp -p` or rsync -t would)
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == sizes
    assert (folder / "model.onnx").read_bytes() == graph  # names, sizes, config, graph: same
    after = fingerprint(folder)
    assert after != before
    assert fingerprint(folder) == after


def test_fingerprint_reads_each_file_once_until_it_changes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner.models.folder as folder_module

    cache = tmp_path / "cache" / "fingerprints.json"
    folder = copy_of(tiny_model_dir, tmp_path)
    read: list[str] = []
    real_digest = folder_module.file_digest

    def counting(path: Path) -> str:
        read.append(path.name)
        return real_digest(path)

    monkeypatch.setattr(folder_module, "file_digest", counting)
    first = fingerprint(folder, cache_file=cache)
    files = sorted(p.name for p in folder.iterdir())
    assert sorted(read) == files
    entries = json.loads(cache.read_text())["files"]
    assert sorted(entries) == sorted(str(folder.resolve() / name) for name in files)

    folder_module._memo.clear()  # as a new process would start
    read.clear()
    assert fingerprint(folder, cache_file=cache) == first
    assert read == []  # every digest came from the cache file

    folder_module._memo.clear()
    rewrite_weights_in_place(folder)
    assert fingerprint(folder, cache_file=cache) != first
    assert read == ["model.onnx.data"]  # only what changed is read again

    # a copy elsewhere has other paths and inodes: hashed, and the same content, same print
    other = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, other)
    read.clear()
    assert fingerprint(other, cache_file=cache) == fingerprint(tiny_model_dir, cache_file=cache)
    shutil.rmtree(other)
    rewrite_weights_in_place(folder)  # the next write of the cache drops what is gone
    fingerprint(folder, cache_file=cache)
    assert not any(k.startswith(str(other)) for k in json.loads(cache.read_text())["files"])


def test_an_unwritable_fingerprint_cache_costs_time_not_answers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    assert fingerprint(tiny_model_dir, cache_file=blocker / "fingerprints.json") == fingerprint(
        tiny_model_dir, cache_file=tmp_path / "ok.json"
    )


def test_fingerprints_differ_between_variants(
    tiny_model_dir: Path, tiny_int8_dir: Path, tiny_int4_dir: Path
) -> None:
    prints = {fingerprint(d) for d in (tiny_model_dir, tiny_int8_dir, tiny_int4_dir)}
    assert len(prints) == 3


def reference_logits(spec: TinySpec, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """The architecture the docstring describes, in plain numpy (no cache, one sequence)."""

    def norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    n, nh, hd = len(ids), spec.heads, spec.head_size
    x = w["embed"][ids]
    inv_freq = 1.0 / (10000.0 ** (np.arange(hd // 2) * 2 / hd))
    angle = np.outer(np.arange(n), inv_freq)
    cos, sin = np.cos(angle), np.sin(angle)

    def rope(t: np.ndarray) -> np.ndarray:  # [heads, n, hd], rotate-half form
        a, b = t[..., : hd // 2], t[..., hd // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    causal = np.triu(np.full((n, n), -1e9, dtype=np.float32), 1)
    for i in range(spec.layers):
        p = f"layers.{i}."
        h = norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
        q, k, v = (
            (h @ w[p + f"attn.{m}"]).reshape(n, nh, hd).transpose(1, 0, 2)
            for m in ("wq", "wk", "wv")
        )
        q, k = rope(q), rope(k)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + (a @ v).transpose(1, 0, 2).reshape(n, -1) @ w[p + "attn.wo"]
        u = norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"]) @ w[p + "mlp.w1"]
        x = x + (u / (1 + np.exp(-u))) @ w[p + "mlp.w2"]
    return norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["lm_head"]


def test_graph_matches_numpy_reference_with_and_without_cache() -> None:
    spec = TinySpec(vocab_size=50, hidden=32, layers=2, heads=4, context_length=64)
    w = random_weights(spec, seed=3)
    for name in w:  # non-trivial norms too
        if name.endswith((".weight", ".bias")):
            w[name] = (
                w[name]
                + np.random.default_rng(4).standard_normal(w[name].shape).astype(np.float32) * 0.1
            )
    sess = ort.InferenceSession(build_graph(spec, w).SerializeToString())
    ids = [3, 17, 42, 8, 8, 1, 30]
    expected = reference_logits(spec, w, ids)

    def run(chunk: list[int], start: int, past: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {
            "input_ids": np.array([chunk], dtype=np.int64),
            "attention_mask": np.ones((1, start + len(chunk)), dtype=np.int64),
            "position_ids": np.arange(start, start + len(chunk), dtype=np.int64)[None],
        }
        for i in range(spec.layers):
            feeds[f"past_key_values.{i}.key"] = past[2 * i]
            feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
        return sess.run(None, feeds)

    empty = [np.zeros((1, 4, 0, 8), dtype=np.float32)] * (2 * spec.layers)
    full = run(ids, 0, empty)
    np.testing.assert_allclose(full[0][0], expected, atol=1e-4)
    # the prompt in one go, then token by token through the KV cache: same logits
    out = run(ids[:4], 0, empty)
    logits = [out[0][0]]
    for pos in range(4, len(ids)):
        out = run([ids[pos]], pos, out[1:])
        logits.append(out[0][0])
    np.testing.assert_allclose(np.concatenate(logits), expected, atol=1e-4)


def test_weights_must_match_the_spec() -> None:
    spec = TinySpec(vocab_size=50, hidden=32, layers=1, heads=4)
    w = random_weights(spec)
    w["lm_head"] = np.zeros((32, 49), dtype=np.float32)
    with pytest.raises(ValueError, match="lm_head"):
        build_graph(spec, w)
    del w["lm_head"]
    with pytest.raises(ValueError, match="missing"):
        build_graph(spec, w)
    with pytest.raises(ValueError, match="multiple of heads"):
        TinySpec(vocab_size=50, hidden=30, heads=4)


def test_cli_inspect_json_and_table(tiny_int4_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(models_app, ["inspect", str(tiny_int4_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["quantization"] == "int4 (MatMulNBits, block 32)"
    assert data["parameters"] == inspect_model(tiny_int4_dir).parameters
    table = runner.invoke(models_app, ["inspect", str(tiny_int4_dir)])
    assert "MatMulNBits 13" in table.stdout
    assert "chat template   yes" in table.stdout


def test_cli_tiny_and_quantize_build_runnable_folders(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "t"
    result = runner.invoke(
        models_app, ["tiny", str(out), "--layers", "1", "--hidden", "32", "--quant", "int8"]
    )
    assert result.exit_code == 0, result.output
    info = inspect_model(out)
    assert (info.layers, info.hidden_size) == (1, 32)
    assert info.quantization.startswith("int8")
    q4 = tmp_path / "q4"
    with pytest.raises(ModelFolderError, match=r"already quantized \(MatMulInteger\)"):
        quantize_model_folder(out, q4, "int4")
    fp = tmp_path / "fp"
    assert runner.invoke(models_app, ["tiny", str(fp), "--hidden", "32"]).exit_code == 0
    assert (
        runner.invoke(
            models_app, ["quantize", str(fp), str(q4), "--to", "int4", "--block-size", "16"]
        ).exit_code
        == 0
    )
    assert inspect_model(q4).quantization == "int4 (MatMulNBits, block 16)"


def test_building_never_deletes_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    from planner.errors import ModelFolderError
    from planner.models.folder import clear_output_folder

    victim = tmp_path / "project"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    with pytest.raises(ModelFolderError, match="not a model folder"):
        clear_output_folder(victim)
    assert (victim / "notes.txt").read_text() == "precious"
    model = tmp_path / "model"
    model.mkdir()
    (model / "genai_config.json").write_text("{}")
    clear_output_folder(model)  # an earlier build is replaced
    assert model.is_dir() and not any(model.iterdir())
