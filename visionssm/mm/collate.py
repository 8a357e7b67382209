"""``pack_collate``: a data loader's batch that leaves its worker process as a few buffers, not hundreds of tensors.

A worker hands each batch to the training process through a pipe; PyTorch moves every tensor in it through a
shared-memory segment and a file descriptor of its own. mmengine's ``pseudo_collate`` keeps a classification
batch as lists: 128 image tensors (or, for ``PackEncodedImage``, 128 files' bytes) and 128 label tensors, 256
segments per batch. Their set-up, not the bytes, then bounds the loader: the ``_gpu-aug`` ImageNet recipe's loader
(``benchmarks/data_pipeline.py``, 2 workers on a 2-core machine) delivered 1 160 images/s so, and 16 400 with
``pack_collate`` (``tests/test_collate.py`` counts the shared tensors).

``pack_collate`` is ``pseudo_collate`` plus two things: images of one shape are stacked into one batch tensor (the
data preprocessor then normalises the batch at once, not image by image), and the batch is a ``PackedBatch``, a
``dict`` that pickles every CPU tensor it holds, at any depth (data samples included), as views of one flat buffer
per dtype. Unpickled, it is the plain ``dict`` that ``pseudo_collate`` would have returned, its tensors views into
those buffers. Use it as a dataloader's ``collate_fn=dict(type='visionssm.pack_collate')``.
"""
from __future__ import annotations

import io
import math
import pickle
from typing import Any, Dict, List, Sequence, Tuple

import torch
from mmengine.dataset import pseudo_collate

from ..registry import FUNCTIONS

__all__ = ['pack_collate', 'PackedBatch']


class _TensorExtractor(pickle.Pickler):
    """Pickles a structure with its CPU tensors left out, by reference (``persistent_id``), and collects them."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: List[torch.Tensor] = []

    def persistent_id(self, obj):
        if type(obj) is torch.Tensor and obj.device.type == 'cpu' and not obj.requires_grad:
            self.tensors.append(obj)
            return len(self.tensors) - 1
        return None


class _TensorRestorer(pickle.Unpickler):
    def __init__(self, file, views: Sequence[torch.Tensor]):
        super().__init__(file)
        self.views = views

    def persistent_load(self, pid):
        return self.views[pid]


def _unpack(payload: bytes, buffers: Dict[torch.dtype, torch.Tensor],
            layout: Sequence[Tuple[torch.dtype, int, Tuple[int, ...]]]) -> Any:
    views = [buffers[dtype][offset:offset + math.prod(shape)].view(shape) for dtype, offset, shape in layout]
    return _TensorRestorer(io.BytesIO(payload), views).load()


class PackedBatch(dict):
    """A collated batch (a ``dict``) whose CPU tensors cross a process boundary as one buffer per dtype.

    In the process that made it, it is the batch itself. Pickled (a data loader worker's queue), it is its structure
    without the tensors, the tensors' bytes concatenated per dtype, and their shapes; unpickled, a plain ``dict``
    whose tensors are views into those buffers (independent tensors that shared memory become separate views).
    """

    def __reduce__(self):
        file = io.BytesIO()
        pickler = _TensorExtractor(file)
        pickler.dump(dict(self))
        groups: Dict[torch.dtype, List[torch.Tensor]] = {}
        sizes: Dict[torch.dtype, int] = {}
        layout = []
        for t in pickler.tensors:
            layout.append((t.dtype, sizes.get(t.dtype, 0), tuple(t.shape)))
            groups.setdefault(t.dtype, []).append(t.reshape(-1))
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
        buffers = {dtype: torch.cat(flat) for dtype, flat in groups.items()}
        return _unpack, (file.getvalue(), buffers, layout)


@FUNCTIONS.register_module()
def pack_collate(data_batch: Sequence) -> Any:
    """``pseudo_collate`` with same-shape ``inputs`` stacked into one tensor, as a ``PackedBatch``."""
    batch = pseudo_collate(data_batch)
    if not isinstance(batch, dict):
        return batch
    inputs = batch.get('inputs')
    if (isinstance(inputs, list) and inputs and all(type(x) is torch.Tensor for x in inputs)
            and len({(x.shape, x.dtype) for x in inputs}) == 1 and inputs[0].dim() == 3):
        batch['inputs'] = torch.stack(inputs)
    return PackedBatch(batch)
