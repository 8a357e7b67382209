"""visionssm.mm.prefetch: batches prepared one step ahead in a thread, the same batches as the plain loop."""
import json
import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')

from test_batch_augment import GPU_AUG, _batch, _preprocessor  # noqa: E402

from visionssm.mm.prefetch import PrefetchEpochBasedTrainLoop, PreparedBatch, prefetched  # noqa: E402
from visionssm.mm.runner import train_main  # noqa: E402


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith('visionssm-prefetch')]


def test_batches_come_in_order_prepared_in_another_thread_one_step_ahead():
    requested = {k: threading.Event() for k in range(5)}
    threads = set()

    def preprocess(data):
        threads.add(threading.get_ident())
        requested[data].set()
        return dict(inputs=torch.full((2,), data))

    seen = []
    for k, batch in enumerate(prefetched(range(5), preprocess)):
        assert isinstance(batch, PreparedBatch) and batch.ready()['inputs'].tolist() == [k, k]
        if k < 4:   # while batch k is in use, batch k + 1 is being prepared
            assert requested[k + 1].wait(timeout=10)
        seen.append(k)
    assert seen == [0, 1, 2, 3, 4]
    assert threads and threading.get_ident() not in threads
    assert not _prefetch_threads()


def test_errors_reach_the_training_thread_and_the_thread_stops():
    def loader():
        yield 0
        raise OSError('disk gone')

    with pytest.raises(OSError, match='disk gone'):
        for _ in prefetched(loader(), lambda data: dict(inputs=data)):
            pass

    def preprocess(data):
        if data == 1:
            raise ValueError('bad batch 1')
        return dict(inputs=data)

    with pytest.raises(ValueError, match='bad batch 1'):
        list(prefetched(range(3), preprocess))
    # leaving the loop early (an exception in the training step) stops the thread too
    batches = prefetched(range(10), lambda data: dict(inputs=data))
    next(batches)
    batches.close()
    assert not _prefetch_threads()


def test_the_data_preprocessor_returns_a_prepared_batch_as_prepared():
    """A batch prepared in the thread equals the batch the preprocessor makes in the training step (same seed)."""
    data = _batch([(40, 50), (70, 30), (33, 33), (64, 48)])
    outputs = []
    for prefetch in (False, True):
        torch.manual_seed(0)
        pre = _preprocessor(img_size=32)
        if prefetch:
            prepared, = prefetched([data], lambda d: pre(d, True))
            out = pre(prepared, True)   # what the model's train_step does with it
            assert type(out) is dict
        else:
            out = pre(data, True)
        outputs.append(out)
    assert torch.equal(outputs[0]['inputs'], outputs[1]['inputs'])
    assert [s.gt_label.item() for s in outputs[0]['data_samples']] == \
        [s.gt_label.item() for s in outputs[1]['data_samples']]


def test_the_loop_names_a_preprocessor_that_cannot_take_prepared_batches():
    from visionssm.mm.classification import ClsDataPreprocessor
    model = SimpleNamespace(train=lambda: None, data_preprocessor=ClsDataPreprocessor())
    loop = SimpleNamespace(runner=SimpleNamespace(call_hook=lambda *a, **k: None, model=model), dataloader=[])
    with pytest.raises(TypeError, match='ClsDataPreprocessor does not accept prepared batches'):
        PrefetchEpochBasedTrainLoop.run_epoch(loop)


def tiny_recipe_options(root) -> list:
    """The gpu-aug recipe's --cfg-options for a folder of 2 classes x 4 training JPEGs under ``root`` (written here):
    test_vmamba at 32², batch 2, one epoch of 4 iterations, no workers."""
    import cv2
    rng = np.random.default_rng(0)
    for split, n in (('train', 4), ('val', 1)):
        for c in range(2):
            os.makedirs(root / split / f'n0{c}')
            for i in range(n):
                cv2.imwrite(str(root / split / f'n0{c}' / f'{i}.jpg'), rng.integers(0, 255, (40, 48, 3), np.uint8))
    return ['data_preprocessor.img_size=32', 'model.backbone.model_name=test_vmamba', 'model.num_classes=2',
            f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
            'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2',
            'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
            'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1']


def test_the_gpu_aug_recipe_trains_the_same_with_and_without_prefetching(tmp_path, monkeypatch):
    """tools/train.py with the recipe's loop and with PrefetchEpochBasedTrainLoop: the same batches, losses and
    weights (seeded, CPU)."""
    options = tiny_recipe_options(tmp_path / 'data')
    import visionssm.mm.prefetch as prefetch
    prepared = []

    def counted(loader, preprocess, device=None):
        for batch in prefetched(loader, preprocess, device):
            prepared.append(batch)
            yield batch
    monkeypatch.setattr(prefetch, 'prefetched', counted)
    runs = {}
    for loop in ('EpochBasedTrainLoop', 'PrefetchEpochBasedTrainLoop'):
        work_dir = tmp_path / loop
        train_main([GPU_AUG, '--work-dir', str(work_dir), '--cfg-options', *options, f'train_cfg.type={loop}',
                    f'experiment_name={loop}'])
        log, = work_dir.glob('*/vis_data/scalars.json')
        losses = [json.loads(line)['loss'] for line in log.read_text().splitlines() if '"loss"' in line]
        weights = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)['state_dict']
        runs[loop] = losses, weights
    assert len(prepared) == 4   # the second run's batches came through the thread
    (plain_losses, plain), (prefetch_losses, prefetched_weights) = runs.values()
    assert len(plain_losses) == 4 and prefetch_losses == plain_losses
    assert all(torch.equal(plain[k], prefetched_weights[k]) for k in plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_a_batch_prepared_on_the_side_stream_equals_the_plain_one_on_cuda():
    """nvJPEG decode and augmentation on the prefetch thread's stream, then used on the current stream (which waits
    for it): the same tensors as in the training step, while the current stream is busy."""
    data = _batch([(375, 500), (333, 500), (500, 375), (64, 48)] * 4)
    outputs = []
    for prefetch in (False, True):
        torch.manual_seed(0)
        pre = _preprocessor(img_size=64).cuda()
        busy = torch.randn(4096, 4096, device='cuda')
        for _ in range(20):   # queued work on the current stream while the batch is prepared on the other
            busy = busy @ busy.T / 4096
        if prefetch:
            prepared, = prefetched([data], lambda d: pre(d, True), pre.device)
            assert prepared.event is not None and prepared.device.index is not None
            out = pre(prepared, True)
        else:
            out = pre(data, True)
        outputs.append(out['inputs'].float().cpu())
    assert torch.equal(outputs[0], outputs[1])


def test_a_failing_step_stops_the_prefetch_thread_before_the_error_leaves_the_loop():
    from visionssm.mm.batch_augment import BatchAugmentDataPreprocessor

    class Preprocessor(BatchAugmentDataPreprocessor):
        def forward(self, data, training=False):
            return data.ready() if isinstance(data, PreparedBatch) else dict(inputs=data)

    def run_iter(idx, data_batch):
        if idx == 1:
            assert _prefetch_threads()   # batch 2 is being prepared
            raise RuntimeError('step failed')

    model = SimpleNamespace(train=lambda: None, data_preprocessor=Preprocessor())
    loop = SimpleNamespace(runner=SimpleNamespace(call_hook=lambda *a, **k: None, model=model),
                           dataloader=range(5), run_iter=run_iter)
    with pytest.raises(RuntimeError, match='step failed') as error:
        PrefetchEpochBasedTrainLoop.run_epoch(loop)
    assert not _prefetch_threads() and error.traceback   # stopped while the traceback still holds the frames
