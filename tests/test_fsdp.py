"""Gradual pruning + fine-tuning under FSDP2 (``fully_shard``; gloo, 2 CPU processes):
weights are sharded DTensors, masks stay whole on every rank."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sparseprune as sp

from .test_distributed import train_locked


def _worker(rank: int, world: int, init_file: str, out: str, mode: str):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    done = False
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)  # same initial model on every rank
        # The last layer's 7 rows shard unevenly (4 + 3).
        model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 7))
        target = nn.Sequential(nn.Linear(24, 7))
        if mode == "structured":
            cfg = sp.PruneConfig(pattern="channel", structured=True, sparsity=0.5)
            pruner = sp.Pruner(model, cfg, example_inputs=(torch.randn(2, 24),))
        else:
            cfg = sp.PruneConfig(pattern=mode, sparsity=0.5 if mode == "2:4" else 0.75,
                                 criterion="magnitude",
                                 schedule=sp.CubicSchedule(start=0, end=20, frequency=4))
            pruner = sp.Pruner(model, cfg)
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if mode == "structured":
            try:
                pruner.prune()
            except RuntimeError as e:
                result = {"error": str(e)}
            else:
                result = {"error": None}
            if rank == 0:
                with open(out, "w") as f:
                    json.dump(result, f)
            dist.barrier()
            done = True
            return
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        pruner.lock(opt)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        losses, mask_mismatch, nonzero_pruned = train_locked(
            pruner, model, target, opt, world, gen, full=lambda t: t.full_tensor(),
            optimizer_state=True)
        sharded = all(isinstance(m.weight, torch.distributed.tensor.DTensor)
                      for m in pruner.layers.values())
        density = [m.float().mean().item() for m in pruner.masks.values()]
        if mode == "2:4":
            full = [pruner.layers[n].weight.full_tensor() for n in pruner.masks]
            nm_ok = all(bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())
                        for w in full)
        else:
            nm_ok = None
        if rank == 0:
            with open(out, "w") as f:
                json.dump(dict(losses=losses, mask_mismatch=mask_mismatch, sharded=sharded,
                               nonzero_pruned=nonzero_pruned, density=density, nm_ok=nm_ok), f)
        dist.barrier()
        done = True
    finally:
        dist.destroy_process_group()
        # As in test_distributed.py: skip interpreter teardown (a library thread joinable at
        # exit sometimes aborts it) once the results are written; an error propagates.
        if done:
            os._exit(0)


def _run(tmp_path, mode):
    out = tmp_path / "result.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out), mode), nprocs=2, join=True)
    return json.loads(out.read_text())


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("mode", ["unstructured", "2:4"])
def test_gradual_pruning_under_fsdp2(tmp_path, mode):
    res = _run(tmp_path, mode)
    assert res["sharded"], "fully_shard did not leave DTensor weights"
    assert res["mask_mismatch"] == 0, "masks differ between ranks"
    assert res["nonzero_pruned"] == 0, "a pruned weight (or its Adam state) became nonzero"
    want = 0.5 if mode == "2:4" else 0.25
    assert all(d == pytest.approx(want, abs=0.02) for d in res["density"])
    if mode == "2:4":
        assert res["nm_ok"]
    first, last = sum(res["losses"][:5]) / 5, sum(res["losses"][-5:]) / 5
    assert last < first, (first, last)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_structured_pruning_of_sharded_weights_says_why(tmp_path):
    res = _run(tmp_path, "structured")
    assert res["error"] and "fully_shard" in res["error"]
