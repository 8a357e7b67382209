"""tools/train.py and tools/test.py end to end on real configs: train, validate, checkpoint, evaluate, resume, DDP."""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
pytest.importorskip('sklearn')

from mmengine.config import Config  # noqa: E402

from visionssm.mm.demo import demo_main  # noqa: E402
from visionssm.mm.runner import test_main as evaluate_main  # noqa: E402  (not collected as a test)
from visionssm.mm.runner import train_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, 'configs/classification/digits_demo.py')
VMAMBA_T = os.path.join(ROOT, 'configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py')

# The digits demo cut down to seconds: a narrower backbone, 32 training images (2 steps of 16), no augmentation and
# no drop path so that runs are reproducible step for step.
DIGITS_FAST = [
    'model.backbone.dims=16', 'model.backbone.drop_path_rate=0.0',
    'train_dataloader.batch_size=16', 'train_dataloader.dataset.indices=32',
    'train_dataloader.dataset.pipeline.0.transforms.0.p=0',
    'val_dataloader.dataset.indices=32', 'test_dataloader.dataset.indices=32',
    'default_hooks.checkpoint.max_keep_ckpts=3', 'default_hooks.logger.interval=1',
]


def _options(*overrides, name):
    # a distinct experiment name per run: mmengine keys its global logger and message hub by it
    return ['--cfg-options', *overrides, f'experiment_name={name}']


def _checkpoint(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def _test_metrics(work_dir):
    logs = sorted(glob.glob(os.path.join(work_dir, '*', '*.json')))
    with open(logs[-1]) as f:
        return json.loads(f.readlines()[-1])


def test_digits_train_evaluate_resume(tmp_path):
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    train_main([DIGITS, '--work-dir', straight,
                *_options(*DIGITS_FAST, 'train_cfg.max_epochs=3', name='digits_straight')])
    assert {'epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth'} <= set(os.listdir(straight))
    curve = json.load(open(os.path.join(straight, 'learning_curve.json')))
    assert [e['epoch'] for e in curve] == [1, 2, 3] and all('accuracy/top1' in e for e in curve)

    # tools/test.py on the last checkpoint reproduces the last validation
    evaluate_main([DIGITS, os.path.join(straight, 'epoch_3.pth'), '--work-dir', str(tmp_path / 'test'),
               *_options(*DIGITS_FAST, name='digits_test')])
    assert _test_metrics(str(tmp_path / 'test'))['accuracy/top1'] == pytest.approx(curve[-1]['accuracy/top1'])

    # a run stopped after epoch 2 and resumed ends in exactly the state of the run that went straight through
    train_main([DIGITS, '--work-dir', resumed, '--resume', os.path.join(straight, 'epoch_2.pth'),
                *_options(*DIGITS_FAST, 'train_cfg.max_epochs=3', name='digits_resumed')])
    a, b = _checkpoint(os.path.join(straight, 'epoch_3.pth')), _checkpoint(os.path.join(resumed, 'epoch_3.pth'))
    assert (b['meta']['epoch'], b['meta']['iter']) == (a['meta']['epoch'], a['meta']['iter']) == (3, 6)
    for key, weight in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][key], weight, rtol=1e-6, atol=1e-7, msg=key)
    for state_a, state_b in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert state_a['step'] == state_b['step']
        torch.testing.assert_close(state_b['exp_avg_sq'], state_a['exp_avg_sq'], rtol=1e-6, atol=1e-10)
    assert a['param_schedulers'] == b['param_schedulers']

    # --resume without a path picks up the latest checkpoint in the work dir
    train_main([DIGITS, '--work-dir', resumed, '--resume',
                *_options(*DIGITS_FAST, 'train_cfg.max_epochs=4', name='digits_auto_resumed')])
    assert _checkpoint(os.path.join(resumed, 'epoch_4.pth'))['meta']['iter'] == 8

    with pytest.raises(FileNotFoundError, match='--resume checkpoint .*missing.pth'):
        train_main([DIGITS, '--work-dir', resumed, '--resume', str(tmp_path / 'missing.pth')])
    with pytest.raises(ValueError, match='checkpoint has 10 classes, the config 3'):
        evaluate_main([DIGITS, os.path.join(straight, 'epoch_3.pth'), '--work-dir', str(tmp_path / 'test'),
                   *_options(*DIGITS_FAST, 'model.num_classes=3', name='digits_wrong_classes')])


def test_classification_trains_without_mmcv(tmp_path):
    """The `cls` extra: mmengine and albumentations, no mmcv (nor mmdet / mmseg), whose build is the long step."""
    work_dir = str(tmp_path / 'run')
    script = ('import sys\n'
              'sys.modules.update(mmcv=None, mmdet=None, mmseg=None)   # as if not installed\n'
              'from visionssm.mm.runner import train_main\n'
              f'train_main({[DIGITS, "--work-dir", work_dir, *_options(*DIGITS_FAST, "train_cfg.max_epochs=1", name="no_mmcv")]!r})\n'
              'assert not any(m == "mmcv" or m.startswith("mmcv.") for m in sys.modules if sys.modules[m])\n')
    subprocess.run([sys.executable, '-c', script], check=True, cwd=ROOT, timeout=600)
    assert 'epoch_1.pth' in os.listdir(work_dir)


def _image_folder(root, classes=3, train=6, val=2):
    rng = np.random.default_rng(0)
    for split, n in (('train', train), ('val', val)):
        for c in range(classes):
            os.makedirs(root / split / f'n0{c}')
            for i in range(n):
                cv2.imwrite(str(root / split / f'n0{c}' / f'{i}.jpg'), rng.integers(0, 255, (40, 48, 3), np.uint8))
    (root / 'train' / 'n00' / 'broken.jpg').write_bytes(b'\xff\xd8 truncated jpeg')


def test_imagenet_recipe_on_a_generated_image_folder(tmp_path):
    """The VMamba-T recipe as configured (EMA, mixup/cutmix, RandAugment, erasing, clipping), AMP on, tiny data."""
    _image_folder(tmp_path / 'data')
    size = ['train_dataloader.dataset.pipeline.1.transforms.0.size=(32,32)',
            'train_dataloader.dataset.pipeline.2.img_size=32',
            'val_dataloader.dataset.pipeline.1.transforms.0.max_size=36',
            'val_dataloader.dataset.pipeline.1.transforms.1.height=32',
            'val_dataloader.dataset.pipeline.1.transforms.1.width=32']
    options = [*size, 'model.backbone.model_name=test_vmamba', 'model.num_classes=3',
               f'train_dataloader.dataset.data_root={tmp_path / "data"}',
               f'val_dataloader.dataset.data_root={tmp_path / "data"}',
               'train_dataloader.batch_size=4', 'val_dataloader.batch_size=4',
               'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
               'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
               'train_cfg.max_epochs=2']
    work_dir = str(tmp_path / 'work')
    train_main([VMAMBA_T, '--work-dir', work_dir, '--amp', *_options(*options, name='imagenet_recipe')])
    checkpoint = _checkpoint(os.path.join(work_dir, 'epoch_2.pth'))
    assert checkpoint['meta']['iter'] == 8  # 19 files (the broken one is replaced by the next), 4 full batches
    assert 'ema_state_dict' in checkpoint and checkpoint['meta']['dataset_meta']['classes'] == ('n00', 'n01', 'n02')
    assert any(f.startswith('best_accuracy_top1_epoch_') for f in os.listdir(work_dir))
    amp = Config.fromfile(os.path.join(work_dir, os.path.basename(VMAMBA_T))).optim_wrapper.type
    assert amp == ('AmpOptimWrapper' if torch.cuda.is_available() else 'visionssm.CPUAmpOptimWrapper')

    test_options = [o.replace('val_dataloader', 'test_dataloader') for o in options if 'val_dataloader' in o]
    evaluate_main([VMAMBA_T, os.path.join(work_dir, 'epoch_2.pth'), '--work-dir', str(tmp_path / 'test'),
               *_options(*options, *test_options, name='imagenet_recipe_test')])
    # the checkpoint's weights are the EMA ones, which validation used: tools/test.py reproduces it
    curve = json.load(open(os.path.join(work_dir, 'learning_curve.json')))
    assert _test_metrics(str(tmp_path / 'test'))['accuracy/top1'] == pytest.approx(curve[-1]['accuracy/top1'])


def test_two_process_ddp_on_gloo(tmp_path):
    work_dir = str(tmp_path / 'ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         os.path.join(ROOT, 'tools/train.py'), DIGITS, '--launcher', 'pytorch', '--work-dir', work_dir,
         '--cfg-options', *DIGITS_FAST, 'train_dataloader.batch_size=8', 'train_cfg.max_epochs=1'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log and 'Epoch(val) [1]' in log
    # 32 images over 2 ranks at 8 per rank: 2 steps
    assert _checkpoint(os.path.join(work_dir, 'epoch_1.pth'))['meta']['iter'] == 2


def test_demo_reports_and_plots(tmp_path, capsys):
    work_dir = str(tmp_path / 'demo')
    demo_main(['--config', DIGITS, '--work-dir', work_dir,
               '--cfg-options', *DIGITS_FAST, 'train_cfg.max_epochs=1', 'experiment_name=demo'])
    table = capsys.readouterr().out
    for row in ('epochs', 'wall time', 'val top-1', 'val top-5', 'checkpoint', 'learning curve', 'load average'):
        assert row in table
    assert os.path.getsize(os.path.join(work_dir, 'learning_curve.png')) > 10_000
    assert os.path.exists(os.path.join(work_dir, 'epoch_1.pth'))


def test_learning_curve_hook_reads_the_loss_once_per_epoch(tmp_path, monkeypatch):
    """Reading a CUDA loss each iteration would make the host wait for the GPU every step: the hook sums on the
    device and reads the sum at the epoch's end."""
    from types import SimpleNamespace

    import torch
    from visionssm.mm.hooks import LearningCurveHook

    hook, runner = LearningCurveHook(), SimpleNamespace(work_dir=str(tmp_path), epoch=0)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, '__float__', lambda t: pytest.fail('the loss was read during the epoch'))
        m.setattr(torch.Tensor, 'item', lambda t: pytest.fail('the loss was read during the epoch'))
        for loss in (2.0, 3.0, 4.0):
            hook.after_train_iter(runner, 0, outputs={'loss': torch.tensor(loss, dtype=torch.bfloat16)})
    hook.after_train_epoch(runner)
    assert json.load(open(tmp_path / 'learning_curve.json')) == [dict(epoch=1, train_loss=3.0)]


def _logged(work_dir):
    rows = [json.loads(line) for line in open(glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json'))[0])]
    keep = ('step', 'loss', 'grad_norm', 'lr', 'accuracy/top1')
    return [{k: v for k, v in row.items() if k in keep} for row in rows]


def test_deferred_scalars_log_what_mmengine_logs(tmp_path):
    """The classification runtime reads the losses and the gradient norm once per log window
    (DeferredRuntimeInfoHook), not at every step: the log holds the same values as with mmengine's hook."""
    runs = {}
    for hook in ('DeferredRuntimeInfoHook', 'RuntimeInfoHook'):
        work_dir = str(tmp_path / hook)
        train_main([DIGITS, '--work-dir', work_dir,
                    *_options(*DIGITS_FAST, 'train_cfg.max_epochs=3', 'default_hooks.logger.interval=2',
                              'log_processor.window_size=2', f'default_hooks.runtime_info.type={hook}',
                              'randomness.seed=0', name=f'digits_{hook}')])
        runs[hook] = _logged(work_dir)
        hooks_listed = open(glob.glob(os.path.join(work_dir, '*', '*.log'))[0]).read()
        assert ('DeferredRuntimeInfoHook' in hooks_listed) == (hook == 'DeferredRuntimeInfoHook')
    deferred, plain = runs['DeferredRuntimeInfoHook'], runs['RuntimeInfoHook']
    assert len(deferred) == len(plain) >= 6 and any('grad_norm' in row for row in deferred)
    for a, b in zip(deferred, plain):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_deferred_scalars_are_read_once_per_flush(monkeypatch):
    from mmengine.logging import MessageHub
    from visionssm.mm.hooks import DeferredRuntimeInfoHook, defer_scalar

    hub = MessageHub.get_instance('deferred_scalars_test')
    defer_scalar(hub, 'train/direct', torch.tensor(1.5))   # no deferring hook: at once
    assert hub.get_scalar('train/direct').current() == 1.5
    hub._visionssm_pending_scalars = []
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, 'item', lambda t: pytest.fail('read before the flush'))
        m.setattr(torch.Tensor, '__float__', lambda t: pytest.fail('read before the flush'))
        for step in range(3):
            defer_scalar(hub, 'train/loss', torch.tensor(float(step)))
            defer_scalar(hub, 'train/grad_norm', torch.tensor(10. + step, dtype=torch.bfloat16))
    assert 'train/loss' not in hub.log_scalars
    DeferredRuntimeInfoHook.flush(hub)
    assert list(hub.get_scalar('train/loss').data[0]) == [0., 1., 2.]
    assert list(hub.get_scalar('train/grad_norm').data[0]) == [10., 11., 12.]
    assert hub._visionssm_pending_scalars == []


def test_deferred_scalars_are_flushed_where_a_checkpoint_saves_the_message_hub():
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook, LoggerHook
    from mmengine.logging import MessageHub
    from visionssm.mm.hooks import DeferredRuntimeInfoHook

    hub = MessageHub.get_instance('deferred_scalars_checkpoint_test')
    runner = SimpleNamespace(message_hub=hub, iter=0, max_iters=100, train_dataloader=list(range(50)),
                             hooks=[CheckpointHook(interval=3, by_epoch=False), LoggerHook(interval=10)])
    hook = DeferredRuntimeInfoHook()
    hub._visionssm_pending_scalars = []
    hook._interval, hook._iter_checkpoints = 10, [runner.hooks[0]]
    for it in range(3):   # the checkpoint of iteration 3 (runner.iter 2) holds all three losses
        runner.iter = it
        hook.after_train_iter(runner, it, outputs={'loss': torch.tensor(float(it))})
        assert len(hub._visionssm_pending_scalars) == (0 if it == 2 else it + 1)
    assert list(hub.get_scalar('train/loss').data[0]) == [0., 1., 2.]


@pytest.mark.parametrize('loop', ['EpochBasedTrainLoop', 'PrefetchEpochBasedTrainLoop'])
def test_host_time_hook_splits_each_iteration_into_its_phases(tmp_path, loop):
    """HostTimeHook: per-phase host times whose sum is the iteration's wall time, then the run's methods as they were
    (the gpu-aug recipe, with and without the prefetch thread)."""
    from test_prefetch import GPU_AUG, tiny_recipe_options

    from visionssm.mm.hooks import HostTimeHook
    from visionssm.mm.runner import Runner
    runners = []
    original_train = Runner.train

    def keep(self):
        runners.append(self)
        return original_train(self)
    config = tmp_path / 'recipe.py'
    config.write_text(f"_base_ = [{GPU_AUG!r}]\ncustom_hooks = [dict(type='HostTimeHook', start=1, iters=3)]\n")
    options = tiny_recipe_options(tmp_path / 'data') + [f'train_cfg.type={loop}']
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Runner, 'train', keep)
        train_main([str(config), '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options])
    summary = json.loads((tmp_path / 'work' / 'host_time.json').read_text())
    assert summary['iters'] == 3 and set(summary) == {'iters', *HostTimeHook.PHASES}
    assert all(summary[p] >= 0 for p in HostTimeHook.PHASES) and summary['forward'] > 0 and summary['backward'] > 0
    parts = sum(summary[p] for p in HostTimeHook.PHASES if p != 'wall')
    assert parts == pytest.approx(summary['wall'], rel=0.2)   # medians of parts, each of the same iterations
    if loop == 'EpochBasedTrainLoop':
        assert summary['preprocess'] > summary['zero_grad']   # decoding and augmentation in the training thread
    runner, = runners
    assert 'call_hook' not in vars(runner) and 'train_step' not in vars(runner.model)   # unpatched
    assert 'forward' not in vars(runner.model.data_preprocessor)
    assert getattr(runner.optim_wrapper.step, '_with_counter', False)   # the schedulers' step counter is back
    with pytest.raises(ValueError, match='iters >= 1'):
        HostTimeHook(iters=0)
