"""The GPU benchmark's CPU-side parts: CLI errors without a GPU, the report format."""

import pytest
import torch

from sparseprune import cli
from sparseprune.bench import cuda as bench_cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench-cuda", "--patterns", "2:4"])
    assert exc.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_copies_exceed_twice_the_l2():
    l2 = 50 << 20
    for nbytes in (1, 3 << 20, 32 << 20, 200 << 20):
        n = bench_cuda._copies(nbytes, l2)
        assert 1 <= n <= 64
        assert n * nbytes >= 2 * l2 or n == 64 or nbytes >= 2 * l2


def test_markdown_rows():
    row = dict(shape="64x32", dtype="float16", pattern="2:4", batch=8, rel_err=1e-4,
               weight_bytes=2560, dense_weight_bytes=4096, dense_us=10.0, ours_us=5.0,
               cusparselt_us=20.0)
    res = dict(device="GPU", l2_bytes=50 << 20, torch="x", cuda="y", date="d", rows=[row],
               limits=dict(copy_GBps=2000.0, fp16_gemm_TFLOPs=700.0))
    md = bench_cuda.markdown(res)
    line = next(ln for ln in md.splitlines() if ln.startswith("| 64x32"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:7] == ["64x32", "float16", "2:4", "8", "10.00", "5.00", "2.00x"]
    assert cells[7:9] == ["20.00", "4.00x"] and cells[9] == "-"
    assert "copy 2000 GB/s" in md
