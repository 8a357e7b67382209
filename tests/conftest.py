import os

import torch

# Without CUDA the Triton kernels run in Triton's interpreter on CPU tensors. The switch is read when kernels are
# decorated, so it must be set before anything (timm → torch._inductor, visionssm) imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# One intra-op thread per xdist worker: `make test` runs one worker per core, and oversubscribed torch threads
# slow the CPU tests down several-fold.
if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)
