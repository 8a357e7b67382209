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

import copy
import io
import pickle
from typing import Any, Dict, List, Sequence, Tuple

import torch
from mmengine.dataset import pseudo_collate

from ..registry import FUNCTIONS

__all__ = ['pack_collate', 'PackedBatch']


def _packable(obj) -> bool:
    """A plain dense CPU tensor outside autograd (others, e.g. sparse, quantized or nested, pickle as usual)."""
    return (type(obj) is torch.Tensor and obj.device.type == 'cpu' and obj.layout == torch.strided
            and not obj.requires_grad and not obj.is_quantized and not obj.is_nested)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill a gap-free block of its storage (any order of dimensions: channels_last too)."""
    expected = 1
    for size, stride in sorted((d for d in zip(t.shape, t.stride()) if d[0] != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


class _TensorExtractor(pickle.Pickler):
    """Pickles a structure with its packable tensors left out, by reference (``persistent_id``), and collects them
    (each tensor object once: a tensor referenced twice comes back as one)."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: List[torch.Tensor] = []
        self._index: Dict[int, int] = {}

    def persistent_id(self, obj):
        if not _packable(obj):
            return None
        if id(obj) not in self._index:
            self._index[id(obj)] = len(self.tensors)
            self.tensors.append(obj)
        return self._index[id(obj)]


class _TensorRestorer(pickle.Unpickler):
    def __init__(self, file, views: Sequence[torch.Tensor]):
        super().__init__(file)
        self.views = views

    def persistent_load(self, pid):
        return self.views[pid]


def _unpack(payload: bytes, buffers: Dict[torch.dtype, torch.Tensor],
            layout: Sequence[Tuple[torch.dtype, int, Tuple[int, ...], Tuple[int, ...]]]) -> Any:
    views = [buffers[dtype].as_strided(shape, stride, offset) for dtype, offset, shape, stride in layout]
    return _TensorRestorer(io.BytesIO(payload), views).load()


class PackedBatch(dict):
    """A collated batch (a ``dict``) whose CPU tensors cross a process boundary as one buffer per dtype.

    In the process that made it, it is the batch itself. Pickled (a data loader worker's queue), it is its structure
    without the tensors, the tensors' bytes concatenated per dtype into shared memory, and their shapes and strides;
    unpickled, a plain ``dict`` whose tensors are views into those buffers, in their memory layout (channels_last
    stays channels_last). Distinct tensors that shared memory come back as separate views.
    """

    def __reduce__(self):
        file = io.BytesIO()
        pickler = _TensorExtractor(file)
        pickler.dump(dict(self))
        groups: Dict[torch.dtype, List[torch.Tensor]] = {}
        sizes: Dict[torch.dtype, int] = {}
        layout = []
        for t in pickler.tensors:
            if _dense(t):   # its storage block in memory order, rebuilt with its own strides
                flat = t.as_strided((t.numel(),), (1,))
                stride = t.stride()
            else:           # gaps between its elements: packed contiguous
                flat, stride = t.reshape(-1), t.contiguous().stride()
            offset = sizes.get(t.dtype, 0)
            layout.append((t.dtype, offset, tuple(t.shape), tuple(stride)))
            groups.setdefault(t.dtype, []).append(flat)
            sizes[t.dtype] = offset + t.numel()
        buffers = {}
        for dtype, flats in groups.items():   # written once, into the shared memory the worker's queue sends
            buffers[dtype] = torch.empty(sizes[dtype], dtype=dtype).share_memory_()
            torch.cat(flats, out=buffers[dtype])
        return _unpack, (file.getvalue(), buffers, layout)

    def __copy__(self):   # copy.copy (pin_memory in the main process): a shallow copy, not a pack
        return PackedBatch(self)

    def __deepcopy__(self, memo):
        return PackedBatch(copy.deepcopy(dict(self), memo))


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
