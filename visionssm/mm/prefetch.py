"""Training batches prepared one step ahead, in a thread of their own.

With the input pipeline on the GPU (``BatchAugmentDataPreprocessor``), the training process decodes and augments
every batch itself: hundreds of small operations whose host time added to the model's step, which is itself bound by
the host at a classification batch (an eager training step issues a thousand kernels). Here a second thread takes
the next batch from the data loader and runs the data preprocessor on it, on a CUDA stream of its own, while the
main thread runs the current step. PyTorch releases the GIL while it dispatches an operation, so the two threads'
host work overlaps where it is not Python; the two streams' GPU work overlaps where the GPU has room.

The order of the batches and the preprocessor's random draws (its own generators) are those of the plain loop, so a
seeded run trains on the same batches either way.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

import torch
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop

from ..registry import LOOPS

__all__ = ['PreparedBatch', 'prefetched', 'PrefetchEpochBasedTrainLoop']


class PreparedBatch(dict):
    """A data preprocessor's output made in the prefetch thread. A preprocessor that accepts prepared batches
    (``accepts_prepared = True``) returns ``batch.ready()`` for it instead of processing it again."""

    def __init__(self, data: Dict[str, Any], event: Optional[torch.cuda.Event] = None,
                 device: Optional[torch.device] = None):
        super().__init__(data)
        self.event, self.device = event, device

    def ready(self) -> Dict[str, Any]:
        """The batch as a plain dict, usable on the current CUDA stream: the stream waits for the work that made
        it (no host wait), and the batch's memory is not reused before the stream is done with it."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(self.event)
            for tensor in _tensors(self):
                if tensor.is_cuda:
                    tensor.record_stream(stream)
        return dict(self)


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, 'values') and callable(value.values):   # mmengine's data elements
        for v in value.values():
            yield from _tensors(v)


def prefetched(loader: Iterable, preprocess: Callable[[Any], Dict[str, Any]],
               device: Optional[torch.device] = None) -> Iterator[PreparedBatch]:
    """``loader``'s batches through ``preprocess``, each prepared in a worker thread while the previous one is in
    use (on a side stream of ``device`` where it is a CUDA device). The loader is iterated by that thread only."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == 'cuda' and device.index is None:
        # 'cuda' is the calling thread's current device (a distributed run's local rank); a new thread's is 0
        device = torch.device('cuda', torch.cuda.current_device())
    stream = torch.cuda.Stream(device) if device is not None and device.type == 'cuda' else None
    batches = iter(loader)
    end = object()

    def prepare():
        data = next(batches, end)
        if data is end:
            return end
        if stream is None:
            return PreparedBatch(preprocess(data))
        with torch.cuda.device(device), torch.cuda.stream(stream):
            out = preprocess(data)
            event = torch.cuda.Event()
            event.record(stream)
        return PreparedBatch(out, event, device)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix='visionssm-prefetch')
    try:
        pending = executor.submit(prepare)
        while True:
            batch = pending.result()   # the thread's exception, if any, is raised here
            if batch is end:
                return
            pending = executor.submit(prepare)   # the next batch is prepared while this one trains
            yield batch
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@LOOPS.register_module()
class PrefetchEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` whose batches the model's data preprocessor prepares one step ahead, in a
    thread (module docstring). Same arguments; the data preprocessor must accept prepared batches
    (``BatchAugmentDataPreprocessor``: the ``_gpu-aug`` recipes).

        train_cfg = dict(type='PrefetchEpochBasedTrainLoop', max_epochs=300, val_interval=1)
    """

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        model = self.runner.model.module if is_model_wrapper(self.runner.model) else self.runner.model
        preprocessor = model.data_preprocessor
        if not getattr(preprocessor, 'accepts_prepared', False):
            raise TypeError(f'{type(self).__name__} prepares batches with the model\'s data preprocessor in a thread; '
                            f'{type(preprocessor).__name__} does not accept prepared batches (use '
                            "BatchAugmentDataPreprocessor, or train_cfg type='EpochBasedTrainLoop')")
        device = getattr(preprocessor, 'device', None)
        # closed on the way out, also when a step raises: the thread stops before the exception travels on
        with contextlib.closing(prefetched(self.dataloader, lambda data: preprocessor(data, True), device)) as batches:
            for idx, data_batch in enumerate(batches):
                self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
