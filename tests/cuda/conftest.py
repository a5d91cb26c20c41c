"""tests/cuda runs only where a CUDA GPU is present: elsewhere nothing here is collected
(the CPU-only build has no CUDA kernels to test)."""

import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
