"""Smoke test of the benchmark harness on tiny shapes: it runs, and writes valid JSON,
Markdown and PNG; bad flags are usage errors. No timing assertion anywhere: times on a shared
CI machine say nothing."""

import json
import math

import pytest
import torch

from sparseprune import cli
from sparseprune.bench import limits, report, shapes, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(path):
    def no_constant(name):
        raise ValueError(f"{path}: non-JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=no_constant)


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 50 and img.shape[1] > 50


def test_bench_and_report_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(limits, "COPY_BYTES", 1 << 20)
    monkeypatch.setattr(limits, "GEMM_N", 64)
    out = tmp_path / "bench"
    argv = ["bench", "--shapes", "32x64,48x32", "--patterns", "90%,8x8@50%,2:4,4x1@80%",
            "--batches", "1,3", "--dtypes", "float32,bfloat16", "--threads", "1",
            "--rounds", "2", "--budget-s", "0.001", "--rotate-mb", "0.25", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 0
    res = _strict_json(out / "results.json")
    assert res["schema"] == report.SCHEMA
    for key in ("cpu", "isa", "torch", "git_commit", "torch_threads", "load_average"):
        assert key in res["machine"]
    assert res["machine"]["torch"] == torch.__version__
    assert [lim["threads"] for lim in res["limits"]] == [1]
    lim = res["limits"][0]  # the better of a measurement at the start and one at the end
    assert lim["copy_GBps"] == max(lim["start"]["copy_GBps"], lim["end"]["copy_GBps"]) > 0
    assert not (out / "results.partial.json").exists()  # removed once the sweep is complete
    rows = res["results"]
    assert len(rows) == 2 * 4 * 2 * 2  # shapes x patterns x batches x dtypes
    assert {(r["shape"], r["pattern"], r["dtype"], r["batch"]) for r in rows} == {
        (s, p, d, b) for s in ("32x64", "48x32") for p in ("90%", "8x8@50%", "2:4", "4x1@80%")
        for d in ("float32", "bfloat16") for b in (1, 3)}
    for r in rows:
        out_f, in_f = map(int, r["shape"].split("x"))
        size = {"4x1@80%": 4, "8x8@50%": 64}.get(r["pattern"], 1)
        units = out_f * in_f // size
        assert r["nnz"] == (units - round(r["sparsity"] * units)) * size
        assert r["dense_s"] > 0 and r["sparse_s"] > 0
        assert math.isclose(r["speedup_vs_dense"], r["dense_s"] / r["sparse_s"])
        assert math.isclose(r["useful_GFLOPs"], 2 * r["batch"] * r["nnz"] / r["sparse_s"] / 1e9)
        assert r["effective_GFLOPs"] >= r["useful_GFLOPs"]
        assert r["pct_copy_bandwidth"] > 0 and r["pct_gemm_peak"] > 0
        # fp32 has torch CSR/BSR on CPU (BSR: square blocks only, MKL); bf16 has neither, and
        # a missing baseline must say why
        if r["dtype"] == "float32" and r["pattern"] != "4x1@80%":
            assert r["torch_sparse"] == ("torch_bsr" if r["kind"] == "block" else "torch_csr")
            assert r["torch_sparse_s"] > 0
        else:
            assert r["torch_sparse_s"] is None and r["torch_sparse_note"]
    assert len(res["dense"]) == 2 * 2  # shapes x batches, fp32 and bf16 in each row
    assert all(d["float32_s"] > 0 and d["bfloat16_s"] > 0 for d in res["dense"])
    assert {(p["shape"], p["pattern"]) for p in res["pack"]} == {
        (s, p) for s in ("32x64", "48x32") for p in ("90%", "8x8@50%", "2:4", "4x1@80%")}
    assert {(b["shape"], b["dtype"], b["batch"]) for b in res["break_even"]} == {
        (s, d, b) for s in ("32x64", "48x32") for d in ("float32", "bfloat16") for b in (1, 3)}

    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| 32x64 | ")
             or line.startswith("| 48x32 | ")]
    assert len([t for t in table if t.count("|") == 18]) == len(rows)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"speedup_vs_{k}_{d}_1t.png" for k in ("sparsity", "batch")
                          for d in ("float32", "bfloat16"))
    for p in out.glob("*.png"):
        _check_png(p)

    # `report` rebuilds the same table and the plots from the JSON alone
    for p in [out / "results.md", *out.glob("*.png")]:
        p.unlink()
    assert cli.main(["report", str(out / "results.json")]) == 0
    assert (out / "results.md").read_text() == md
    assert sorted(p.name for p in out.glob("*.png")) == pngs


@pytest.mark.parametrize("flag,value,listed", [
    ("--patterns", "3:4", ["2:4", "16x16@80%", "unstructured"]),
    ("--shapes", "12y5", ["OUTxIN", "minilm", "llama", "resnet50"]),
    ("--dtypes", "float16", ["float32", "bfloat16"]),
    ("--batches", "0", ["positive"]),
])
def test_bad_flags_are_usage_errors(flag, value, listed, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and value in err
    for v in listed:
        assert v in err


def test_report_rejects_other_json(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"recipes": []}')
    assert cli.main(["report", str(path)]) == 2
    assert "not a sparseprune bench result" in capsys.readouterr().err


def test_parsers():
    assert shapes.parse_shapes("minilm,4096x4096,384x384") == (
        (384, 384), (1536, 384), (384, 1536), (4096, 4096))
    assert shapes.parse_patterns("nm,90%") == ("2:4", "1:4", "2:8", "90%")
    assert len(shapes.parse_patterns("all")) == 5 + 3 + 5 * 3


def test_shapes_from_module():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Conv2d(3, 5, 1),
                                torch.nn.Conv2d(5, 6, 3), torch.nn.Linear(8, 4),
                                torch.nn.Linear(4, 2))
    assert shapes.shapes_from_module(model) == ((4, 8), (5, 3), (2, 4))


def test_break_even_interpolates():
    def row(s, speedup, batch=1):
        return {"kind": "unstructured", "shape": "8x8", "dtype": "float32", "threads": 1,
                "batch": batch, "sparsity": s, "speedup_vs_dense": speedup}

    got = sweep.break_even([row(0.9, 3.0), row(0.5, 0.5), row(0.7, 1.5),
                            row(0.5, 1.2, 8), row(0.9, 0.8, 32)])
    by_batch = {g["batch"]: g for g in got}
    assert by_batch[1]["sparsity"] == pytest.approx(0.6) and by_batch[1]["bound"] == "interpolated"
    assert by_batch[8]["sparsity"] == 0.5 and by_batch[8]["bound"] == "at or below"
    assert by_batch[32]["sparsity"] is None


@pytest.mark.parametrize("native", [True, False])
def test_bf16_baselines_only_where_bf16_is_native_or_swept(monkeypatch, native):
    monkeypatch.setattr(sweep, "native_bf16", lambda: native)
    fp32_only = sweep.SweepConfig(dtypes=("float32",))
    both = sweep.SweepConfig(dtypes=("float32", "bfloat16"))
    assert sweep.baseline_dtypes(fp32_only) == (("float32", "bfloat16") if native
                                                else ("float32",))
    assert sweep.baseline_dtypes(both) == ("float32", "bfloat16")
    cfg = sweep.SweepConfig(shapes=((16, 32),), patterns=("50%",), batches=(1,),
                            dtypes=("float32",), threads=(1,), rounds=1, min_rounds=1,
                            budget_s=0.01, baselines=False, pack_rounds=1,
                            limit_kwargs=dict(copy_bytes=1 << 16, gemm_n=32, rounds=1))
    res = sweep.run(cfg, progress=False)
    assert ("bfloat16_s" in res["dense"][0]) is native
    assert ("bfloat16" in res["limits"][0]["gemm_GFLOPs"]) is native
    report.markdown({**res, "machine": {}})  # a missing bf16 baseline prints as "-"
