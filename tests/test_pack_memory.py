"""Packing a Llama-7B MLP layer (11008 x 4096, fp32, 180 MB) peaks at <= 3x the dense
weight's bytes, the dense weight itself included: in a fresh interpreter, the peak RSS
(VmHWM, reset through /proc/self/clear_refs just before packing) over the RSS before the
weight existed. Making the mask is not counted (it is the pruning step, not packing)."""

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys, torch
import sparseprune as sp
fmt = sys.argv[1]
def status(key):  # bytes
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
def peak():
    return status("VmHWM")
torch.manual_seed(0)
base = peak()
w = torch.randn(11008, 4096)
# Random masks of the pattern (fast to make; only the packing is measured).
if fmt == "csr":
    mask = torch.rand(11008, 4096) < 0.1
elif fmt == "bsr":
    mask = (torch.rand(688, 1, 256, 1) < 0.1).expand(688, 16, 256, 16).reshape(11008, 4096)
else:
    mask = sp.masks.n_m(torch.rand(11008, 4096), 2, 4)
w.mul_(mask)
del mask
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
before = peak()
kw = {"block": (16, 16)} if fmt == "bsr" else {"n": 2, "m": 4} if fmt == "nm" else {}
packed = sp.pack(w, fmt, **kw)
print(json.dumps({"dense": w.numel() * 4, "base": base, "before": before, "after": peak(),
                  "packed": packed.nbytes}))
"""


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_packing_peak_memory(fmt):
    out = subprocess.run([sys.executable, "-c", SCRIPT, fmt], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    peak = r["after"] - r["base"]
    print(f"{fmt}: packing peak {peak / r['dense']:.2f}x the dense weight "
          f"(packed: {r['packed'] / r['dense']:.2f}x)")
    assert r["before"] - r["base"] >= r["dense"]  # the weight is resident when packing starts
    assert peak <= 3 * r["dense"], f"{fmt}: packing peaked at {peak / r['dense']:.2f}x"
