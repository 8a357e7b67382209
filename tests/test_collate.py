"""pack_collate / PackedBatch: a classification batch leaves a data loader worker as one buffer per dtype."""
import pytest

pytest.importorskip('mmengine')

import pickle  # noqa: E402
from multiprocessing.reduction import ForkingPickler  # noqa: E402

import torch  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402

from visionssm.mm.collate import PackedBatch, pack_collate  # noqa: E402


def _samples(n=6, encoded=False):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        sample = BaseDataElement(metainfo=dict(img_path=f'train/c{i % 3}/{i}.jpg'))
        sample.gt_label = torch.tensor(i % 3)
        img = torch.randint(0, 256, (100 + 7 * i,) if encoded else (3, 8, 8), generator=g, dtype=torch.uint8)
        out.append(dict(inputs=img, data_samples=sample))
    return out


class _CountTensors:
    """Counts the tensors that torch's ForkingPickler reducer shares (one shared-memory segment and descriptor each)."""

    def __enter__(self):
        self.count = 0
        self.original = ForkingPickler._extra_reducers[torch.Tensor]

        def counting(t):
            self.count += 1
            return self.original(t)
        ForkingPickler._extra_reducers[torch.Tensor] = counting
        return self

    def __exit__(self, *exc):
        ForkingPickler._extra_reducers[torch.Tensor] = self.original


def _through_a_worker_queue(batch):
    with _CountTensors() as shared:
        payload = ForkingPickler.dumps(batch)
    return pickle.loads(payload), shared.count


@pytest.mark.parametrize('encoded', [False, True], ids=['decoded', 'encoded'])
def test_a_packed_batch_crosses_processes_as_one_buffer_per_dtype(encoded):
    samples = _samples(encoded=encoded)
    plain, plain_shared = _through_a_worker_queue(pseudo_collate(samples))
    packed, packed_shared = _through_a_worker_queue(pack_collate(samples))
    assert plain_shared == 12 and packed_shared == 2   # images and labels one by one; uint8 and int64 buffers
    assert type(packed) is dict
    images = list(packed['inputs']) if not encoded else packed['inputs']
    if encoded:   # files of different lengths stay a list (BatchAugmentDataPreprocessor decodes them)
        assert isinstance(images, list) and [len(x) for x in images] == [100 + 7 * i for i in range(6)]
    else:         # same-shape images are one batch tensor
        assert packed['inputs'].shape == (6, 3, 8, 8)
    for got, want in zip(images, plain['inputs']):
        assert torch.equal(got, want)
    for got, want in zip(packed['data_samples'], plain['data_samples']):
        assert torch.equal(got.gt_label, want.gt_label) and got.gt_label.dtype == torch.int64
        assert got.img_path == want.img_path


def test_a_packed_batch_is_the_batch_in_its_own_process():
    batch = pack_collate(_samples())
    assert isinstance(batch, PackedBatch) and isinstance(batch, dict)
    assert batch['inputs'].shape == (6, 3, 8, 8) and len(batch['data_samples']) == 6


def test_pack_collate_leaves_other_batches_as_pseudo_collate_does():
    pairs = [(torch.ones(2), 1), (torch.zeros(2), 2)]   # not dicts: pseudo_collate's result, untouched
    assert not isinstance(pack_collate(pairs), PackedBatch)
    mixed = [dict(inputs=torch.zeros(3, 4, 4)), dict(inputs=torch.zeros(3, 5, 4))]   # shapes differ: a list
    assert isinstance(pack_collate(mixed)['inputs'], list)
    grads = PackedBatch(x=torch.ones(2, requires_grad=True), y=torch.zeros(0), z=torch.tensor(3.0))
    back, _ = _through_a_worker_queue(grads)
    assert back['x'].requires_grad and back['y'].shape == (0,) and back['z'].shape == () and back['z'] == 3.0


def test_a_data_loader_with_workers_delivers_the_same_batches():
    from torch.utils.data import DataLoader
    samples = _samples(8)
    runs = []
    for workers in (0, 2):
        loader = DataLoader(samples, batch_size=4, num_workers=workers, collate_fn=pack_collate)
        runs.append(list(loader))
    for a, b in zip(*runs):
        assert torch.equal(a['inputs'], b['inputs'])
        assert [s.gt_label.item() for s in a['data_samples']] == [s.gt_label.item() for s in b['data_samples']]


def test_the_classification_configs_use_it():
    from mmengine.config import Config
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / 'configs/classification/vmamba'
    for name in ('vmamba-t-s1l8_8xb128_in1k.py', 'vmamba-t-s1l8_8xb128_in1k_gpu-aug.py'):
        cfg = Config.fromfile(str(root / name))
        assert cfg.train_dataloader.collate_fn.type == 'visionssm.pack_collate'
        assert cfg.val_dataloader.collate_fn.type == 'visionssm.pack_collate'


def test_layouts_and_special_tensors_survive_the_trip():
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    label = torch.tensor([1, 2])
    batch = PackedBatch(cl=image, same=[label, label], strided=image[:, :, ::2], expanded=label.expand(3, 2),
                        sparse=torch.eye(3).to_sparse(), scalar=torch.tensor(7))
    back, shared = _through_a_worker_queue(batch)
    assert back['cl'].is_contiguous(memory_format=torch.channels_last) and torch.equal(back['cl'], image)
    assert back['same'][0] is back['same'][1] and torch.equal(back['same'][0], label)   # one tensor, referenced twice
    assert torch.equal(back['strided'], image[:, :, ::2]) and torch.equal(back['expanded'], label.expand(3, 2))
    assert back['sparse'].is_sparse and torch.equal(back['sparse'].to_dense(), torch.eye(3))   # pickled as usual
    assert back['scalar'].shape == () and back['scalar'] == 7
    assert shared <= 4   # float32 and int64 buffers (and the sparse tensor's own parts)


def test_copying_a_packed_batch_does_not_pack_it():
    import copy
    from unittest import mock
    batch = pack_collate(_samples())
    with mock.patch.object(PackedBatch, '__reduce__', side_effect=AssertionError('packed')):
        shallow, deep = copy.copy(batch), copy.deepcopy(batch)
    assert isinstance(shallow, PackedBatch) and shallow['inputs'] is batch['inputs']
    assert torch.equal(deep['inputs'], batch['inputs']) and deep['inputs'] is not batch['inputs']


def test_the_recipes_copy_batches_without_a_synchronization_per_tensor():
    """A blocking host-to-device copy synchronizes the stream: mmengine copies each of a batch's 128 labels apart."""
    from mmengine.config import Config
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / 'configs/classification/vmamba'
    for name in ('vmamba-t-s1l8_8xb128_in1k.py', 'vmamba-t-s1l8_8xb128_in1k_gpu-aug.py'):
        assert Config.fromfile(str(root / name)).data_preprocessor.non_blocking is True
