"""Distributed training on the CPU over gloo, two processes standing for two GPUs (NCCL runs the same code).

* The scan op under ``MMDistributedDataParallel`` as the runner builds it (``find_unused_parameters=False``),
  with gradients split over several buckets: every family trains, and each rank's gradient is the single-process
  gradient of the whole batch.
* ``tools/dist_train.sh``: the torchrun command it builds, single- and multi-node.
* Checkpoints resumed on another number of processes: 1 -> 2 and 2 -> 1, with the same total batch, continue
  as an uninterrupted run, to float rounding (weights, AdamW state, LR schedule, EMA, epoch and iteration
  counters), and a resumed process starts from exactly the saved state.
* ``benchmarks/dist_scaling.py``: the run configs it writes and the report it makes of the logs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip('mmengine')
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip('torch.distributed with the gloo backend is not available', allow_module_level=True)
if 'spawn' not in mp.get_all_start_methods():
    pytest.skip('multiprocessing cannot spawn processes here', allow_module_level=True)

from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402

from _scripts import load_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# The scan op under DDP

FAMILIES = ['test_vmamba', 'test_vim', 'test_efficientvmamba', 'test_groupmamba', 'test_spatialmamba']
WORLD, BATCH, SIZE, CLASSES, STEPS = 2, 4, 64, 5, 2
BUCKET_MB = 0.05  # far below DDP's 25 MB, so that the tiny models' gradients are reduced in several buckets


def _classifier(name: str):
    from visionssm.mm.classification import ImageClassifier
    torch.manual_seed(0)  # the same initial weights in every process
    return ImageClassifier(backbone=dict(model_name=name), num_classes=CLASSES,
                           data_preprocessor=dict(type='ImgDataPreprocessor'))


def _has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _batches():
    """STEPS full batches, the same in every process."""
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
             torch.randint(0, CLASSES, (BATCH,), generator=generator)) for _ in range(STEPS)]


def _data(inputs, labels, part=slice(None)):
    return dict(inputs=inputs[part], data_samples=[BaseDataElement(gt_label=label) for label in labels[part]])


class _RecordingOptimWrapper(OptimWrapper):
    """Keeps a copy of the gradients each optimizer step applies."""

    def __init__(self, model, **kwargs):
        super().__init__(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **kwargs)
        self.names = {p: n for n, p in model.named_parameters()}
        self.grads = []

    def step(self, **kwargs):
        self.grads.append({name: None if p.grad is None else p.grad.clone() for p, name in self.names.items()})
        super().step(**kwargs)


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    from mmengine.model import MMDistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}
    for name in FAMILIES:
        model = _classifier(name)
        # what visionssm.mm.runner builds for the pytorch launcher on CPU
        ddp = MMDistributedDataParallel(model, device_ids=None, broadcast_buffers=False,
                                        find_unused_parameters=False, bucket_cap_mb=BUCKET_MB)
        optim_wrapper = _RecordingOptimWrapper(model)
        for inputs, labels in _batches():
            # an unused parameter would fail here, at the second step: its gradient bucket never got reduced
            ddp.train_step(_data(inputs, labels, shard), optim_wrapper)
        # the first step reduces one bucket; DDP then rebuilds them in the order the gradients became ready
        results[name] = dict(grads=optim_wrapper.grads, params=dict(model.named_parameters()),
                             buckets=len(ddp.reducer._get_zeros_like_grad_buckets()))
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


def _single_process(name: str) -> tuple:
    """The gradients and final weights of the same steps in one process. With BatchNorm each rank normalises
    with its own half's statistics, so the reference is the two halves' gradients averaged (accumulated)."""
    model = _classifier(name)
    parts = [slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD) for r in range(WORLD)] \
        if _has_batch_norm(model) else [slice(None)]
    optim_wrapper = _RecordingOptimWrapper(model, accumulative_counts=len(parts))
    for inputs, labels in _batches():
        for part in parts:
            model.train_step(_data(inputs, labels, part), optim_wrapper)
    return optim_wrapper.grads, dict(model.named_parameters())


def test_scan_op_trains_under_ddp(tmp_path):
    # one test for all families: the two spawned processes are most of its time
    mp.spawn(_ddp_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(WORLD)]
    for name in FAMILIES:
        grads, params = _single_process(name)
        first, second = ranks[0][name], ranks[1][name]
        assert first['buckets'] > 1 and second['buckets'] > 1, (name, first['buckets'], second['buckets'])
        for step in range(STEPS):
            unused = [key for key, grad in first['grads'][step].items() if grad is None]
            assert not unused, f'{name}, step {step}: parameters without a gradient: {unused}'
            for key, grad in grads[step].items():
                # all-reduced: the ranks hold the same gradient, the mean of theirs, i.e. that of the whole batch
                torch.testing.assert_close(second['grads'][step][key], first['grads'][step][key], rtol=0, atol=0,
                                           msg=f'{name}, step {step}: {key} differs between the ranks')
                # float32 sums in another order (two halves, then the all-reduce): the error scales with the
                # tensor's magnitudes, not each element's (an element near 0 differed by 1.5e-6 at rtol 7e-4)
                torch.testing.assert_close(first['grads'][step][key], grad, rtol=1e-4,
                                           atol=max(1e-6, 1e-4 * grad.abs().max().item()),
                                           msg=f'{name}, step {step}: {key}')
        for key, weight in params.items():
            torch.testing.assert_close(first['params'][key], weight, rtol=1e-5, atol=1e-6, msg=f'{name}: {key}')


# ---------------------------------------------------------------------------------------------------------------
# tools/dist_train.sh and tools/dist_test.sh

LAUNCH_VARS = ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'NCCL_NVLS_ENABLE', 'PYTHON')


def _launch(script, *args, tmp_path, **env):
    """Runs a launch script with a stand-in interpreter that prints the command torchrun would get."""
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\necho "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE $*"\n')
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return subprocess.run(['bash', str(ROOT / 'tools' / script), *args], env={**base, 'PYTHON': str(fake), **env},
                          capture_output=True, text=True, timeout=60)


def test_launch_scripts_build_the_torchrun_command(tmp_path):
    config = 'configs/classification/digits_demo.py'
    one_node = _launch('dist_train.sh', config, '2', '--amp', '--cfg-options', 'a=1', tmp_path=tmp_path)
    assert one_node.returncode == 0, one_node.stderr
    assert one_node.stdout.split() == [
        'NCCL_NVLS_ENABLE=0', '-m', 'torch.distributed.run', '--nnodes=1', '--node_rank=0', '--standalone',
        '--nproc_per_node=2', str(ROOT / 'tools/train.py'), config, '--launcher', 'pytorch', '--amp',
        '--cfg-options', 'a=1']

    second_node = _launch('dist_train.sh', config, '8', tmp_path=tmp_path, NNODES='2', NODE_RANK='1',
                          MASTER_ADDR='10.0.0.1', MASTER_PORT='29501', NCCL_NVLS_ENABLE='1')
    assert second_node.stdout.split()[:8] == [
        'NCCL_NVLS_ENABLE=1', '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
        '--master_addr=10.0.0.1', '--master_port=29501', '--nproc_per_node=8']

    test = _launch('dist_test.sh', config, 'Makefile', '4', '--work-dir', 'w', tmp_path=tmp_path, MASTER_PORT='29502')
    assert test.stdout.split()[5:] == [
        '--master_addr=127.0.0.1', '--master_port=29502', '--nproc_per_node=4', str(ROOT / 'tools/test.py'), config,
        'Makefile', '--launcher', 'pytorch', '--work-dir', 'w']

    for script, args, env, error in [
            ('dist_train.sh', (config, '8'), dict(NNODES='2', NODE_RANK='1'), 'set MASTER_ADDR'),
            ('dist_train.sh', (config, '8'), dict(NNODES='2', NODE_RANK='2', MASTER_ADDR='h'), 'NODE_RANK < NNODES'),
            ('dist_train.sh', (config, '0'), {}, 'usage'),
            ('dist_train.sh', ('missing.py', '2'), {}, "config file 'missing.py' does not exist"),
            ('dist_test.sh', (config, 'missing.pth', '2'), {}, "checkpoint 'missing.pth' does not exist")]:
        result = _launch(script, *args, tmp_path=tmp_path, **env)
        assert result.returncode == 2 and error in result.stderr and not result.stdout, (args, env, result.stderr)


# ---------------------------------------------------------------------------------------------------------------
# Resuming on another number of processes

DIGITS = str(ROOT / 'configs/classification/digits_demo.py')
# The digits demo cut to seconds, as in tests/test_train_cls.py (test_vmamba at width 16, 32 training images, no
# augmentation or drop path: reproducible step for step), at a total batch of 16: 2 steps per epoch.
RESUME_OPTIONS = {
    'model.backbone.dims': 16, 'model.backbone.drop_path_rate': 0.0, 'train_dataloader.dataset.indices': 32,
    'train_dataloader.dataset.pipeline.0.transforms.0.p': 0, 'val_dataloader.dataset.indices': 16,
    'default_hooks.checkpoint.max_keep_ckpts': 3, 'default_hooks.logger.interval': 1}


def _cli_options(batch: int, epochs: int, **more) -> list:
    options = {**RESUME_OPTIONS, 'train_dataloader.batch_size': batch, 'train_cfg.max_epochs': epochs, **more}
    return ['--cfg-options', *(f'{key}={value}' for key, value in options.items())]


def _with_ema(tmp_path) -> str:
    """The digits config with the ImageNet recipes' EMA hook, at a momentum that moves it in a few steps."""
    config = tmp_path / 'digits_ema.py'
    config.write_text(f'_base_ = [{DIGITS!r}]\ncustom_hooks = [dict(type="LearningCurveHook"), '
                      'dict(type="EMAHook", momentum=0.1, priority="ABOVE_NORMAL")]\n')
    return str(config)


def _train_in_process(config, work_dir, *args, batch, epochs, name):
    from mmengine.registry import DefaultScope

    from visionssm.mm.runner import train_main
    with DefaultScope.overwrite_default_scope('visionssm'):
        train_main([config, '--work-dir', str(work_dir), *args, *_cli_options(batch, epochs, experiment_name=name)])


def _two_process_env() -> dict:
    """tools/dist_train.sh's environment: no launch variables of the caller's, this checkout's code whatever the
    environment has installed, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')])))
    return env


def _train_two_processes(config, work_dir, *args, batch, epochs):
    env = _two_process_env()
    result = subprocess.run(
        ['bash', str(ROOT / 'tools/dist_train.sh'), config, '2', '--work-dir', str(work_dir), *args,
         *_cli_options(batch, epochs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert 'Distributed training: True' in result.stdout + result.stderr


def _checkpoint(path):
    from visionssm.mm.runner import load_local_checkpoint
    return load_local_checkpoint(str(path))


def _learning_rates(work_dir) -> dict:
    """iteration -> learning rate, from the training log of every run in the work dir."""
    rates = {}
    for scalars in sorted(Path(work_dir).glob('*/vis_data/scalars.json')):
        for line in scalars.read_text().splitlines():
            entry = json.loads(line)
            if 'lr' in entry and 'loss' in entry:
                rates[entry['iter']] = entry['lr']
    return rates


def _assert_same_training_state(actual: dict, expected: dict) -> None:
    """Equal to float rounding: two ranks average their gradients where one process takes the mean over the same
    16 images (measured differences: weights 1e-7, AdamW's exp_avg 5e-8 and exp_avg_sq 2e-10)."""
    assert (actual['meta']['epoch'], actual['meta']['iter']) == (expected['meta']['epoch'], expected['meta']['iter'])
    for part in ('state_dict', 'ema_state_dict'):  # the EMA weights, and the trained ones with EMA's step count
        assert actual[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(actual[part][key], value, rtol=1e-5, atol=1e-6, msg=f'{part}: {key}')
    optimizer, saved = actual['optimizer'], expected['optimizer']
    assert [g['lr'] for g in optimizer['param_groups']] == [g['lr'] for g in saved['param_groups']]
    assert optimizer['state'].keys() == saved['state'].keys()
    for index, state in saved['state'].items():
        assert optimizer['state'][index]['step'] == state['step']
        for key, atol in (('exp_avg', 1e-6), ('exp_avg_sq', 1e-9)):
            torch.testing.assert_close(optimizer['state'][index][key], state[key], rtol=1e-4, atol=atol,
                                       msg=f'optimizer state {index}: {key}')
    assert actual['param_schedulers'] == expected['param_schedulers']


# The tests that launch two training processes with tools/dist_train.sh run one after the other on one pytest-xdist
# worker (`make test` distributes with --dist loadgroup): two such jobs at once on a 2-core machine, beside the rest
# of the suite, once ended with a rank aborted at exit ("terminate called without an active exception").
SERIAL = pytest.mark.xdist_group('two-process-training')


@SERIAL
def test_resume_across_world_sizes(tmp_path):
    """1 process -> 2 processes -> 1 process, the total batch 16 throughout, against runs that went on without
    a change: the same weights, EMA, AdamW moments and step counts, LR schedule and counters."""
    config = _with_ema(tmp_path)
    one, two, back = tmp_path / 'one', tmp_path / 'two', tmp_path / 'back'
    _train_in_process(config, one, batch=16, epochs=2, name='one_process')
    _train_two_processes(config, two, '--resume', str(one / 'epoch_1.pth'), batch=8, epochs=3)
    _train_in_process(config, back, '--resume', str(two / 'epoch_2.pth'), batch=16, epochs=3, name='back')

    # epoch 2 on two processes, resumed from one process's epoch 1, is epoch 2 of the one-process run
    _assert_same_training_state(_checkpoint(two / 'epoch_2.pth'), _checkpoint(one / 'epoch_2.pth'))
    # epoch 3 on one process, resumed from two processes' epoch 2, is epoch 3 of the two-process run
    _assert_same_training_state(_checkpoint(back / 'epoch_3.pth'), _checkpoint(two / 'epoch_3.pth'))
    # the schedule went on where it stopped, iteration for iteration
    one_lr, two_lr, back_lr = _learning_rates(one), _learning_rates(two), _learning_rates(back)
    assert sorted(one_lr) == [1, 2, 3, 4] and sorted(two_lr) == [3, 4, 5, 6] and sorted(back_lr) == [5, 6]
    assert [two_lr[i] for i in (3, 4)] == [one_lr[i] for i in (3, 4)]
    assert [back_lr[i] for i in (5, 6)] == [two_lr[i] for i in (5, 6)]

    # and what a resumed process starts from is the saved state, bit for bit: a 1-process runner on the
    # 2-process checkpoint, with nothing left to train
    from mmengine.hooks import EMAHook
    from mmengine.registry import DefaultScope

    from visionssm.mm.runner import build_runner, load_config
    saved = _checkpoint(two / 'epoch_2.pth')
    cfg = load_config(config, {**RESUME_OPTIONS, 'train_dataloader.batch_size': 16, 'train_cfg.max_epochs': 2,
                               'experiment_name': 'loaded'}, work_dir=str(tmp_path / 'loaded'))
    cfg.resume, cfg.load_from = True, str(two / 'epoch_2.pth')
    with DefaultScope.overwrite_default_scope('visionssm'):
        runner = build_runner(cfg)
        runner.train()
    assert (runner.epoch, runner.iter) == (2, 4) and runner.world_size == 1
    _assert_equal(runner.optim_wrapper.state_dict(), saved['optimizer'])
    assert [s.state_dict() for s in runner.param_schedulers] == saved['param_schedulers']
    # the checkpoint holds the EMA weights as state_dict and the trained ones under ema_state_dict ('module.*')
    ema = next(h for h in runner.hooks if isinstance(h, EMAHook)).ema_model.state_dict()
    _assert_equal(ema, {'steps': saved['ema_state_dict']['steps'],
                        **{f'module.{k}': v for k, v in saved['state_dict'].items()}})
    _assert_equal(runner.model.state_dict(), {k[len('module.'):]: v for k, v in saved['ema_state_dict'].items()
                                              if k.startswith('module.')})


def _assert_equal(actual, expected, where='') -> None:
    """Nested dicts / lists of tensors and plain values, equal exactly."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_equal(actual[key], expected[key], f'{where}.{key}')
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_equal(a, e, f'{where}[{i}]')
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


# ---------------------------------------------------------------------------------------------------------------
# benchmarks/dist_scaling.sh: its Python steps (the runs themselves need GPUs)

def _dist_scaling():
    return load_benchmark('dist_scaling')


def test_dist_scaling_configs_and_report(tmp_path):
    from mmengine.config import Config
    scaling = _dist_scaling()
    scaling.main(['prepare', str(tmp_path), '--iters', '30', '--classes', '3', '--per-class', '2',
                  '--coco-train', '2', '--workers', '0'])
    assert sorted(p.name for p in (tmp_path / 'data' / 'imagenet' / 'train').iterdir()) == \
        ['n00000000', 'n00000001', 'n00000002']
    cls = Config.fromfile(str(tmp_path / 'configs' / 'cls.py'))  # the released recipe, cut to a timing run
    assert cls.train_cfg == dict(type='IterBasedTrainLoop', max_iters=30)
    assert cls.val_cfg is None and cls.default_hooks.checkpoint is None and cls.randomness.seed == 0
    assert cls.model.backbone.model_name == 'vmamba_tiny_s1l8' and cls.model.mixup.cutmix_alpha == 1.0
    assert any(h.type == 'EMAHook' for h in cls.custom_hooks) and cls.train_dataloader.batch_size == 128
    assert cls.train_dataloader.dataset.data_root == str(tmp_path / 'data' / 'imagenet')
    assert cls.param_scheduler == [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30)]
    det_text = (tmp_path / 'configs' / 'det.py').read_text()
    assert "'ann_file': 'annotations/instances_train.json'" in det_text and "'init_cfg': None" in det_text

    # two runs of a task; a third failed before logging
    def log(run, entries, rc=0):
        vis = tmp_path / 'runs' / run / '20260101_000000' / 'vis_data'
        vis.mkdir(parents=True)
        vis.joinpath('scalars.json').write_text(''.join(json.dumps(e) + '\n' for e in entries))
        (tmp_path / 'runs' / f'{run}.rc').write_text(f'{rc}\n')

    def entries(seconds, memory_mb):
        return [dict(iter=i, loss=2.0 - i / 100, time=seconds * (3 if i == 10 else 1), data_time=0.01,
                     memory=memory_mb, lr=1e-4) for i in (10, 20, 30)]
    log('cls_1gpu', entries(0.5, 2048))
    log('cls_2gpu', entries(0.625, 3072))
    (tmp_path / 'runs' / 'det_1gpu').mkdir()
    (tmp_path / 'runs' / 'det_1gpu.rc').write_text('1\n')
    result = scaling.report(tmp_path, warmup=10)
    one, two, det = result['runs']  # by task, then GPUs
    assert (one['task'], one['gpus'], two['gpus'], det['task']) == ('cls', 1, 2, 'det')
    assert one['s_per_iter'] == 0.5 and one['img_per_s'] == 256.0 and two['img_per_s'] == 409.6  # after warm-up
    assert two['scaling_efficiency'] == 0.8 and one['scaling_efficiency'] == 1.0
    assert two['peak_mem_gib'] == 3.0 and two['loss_curve'] == [[10, 1.9], [20, 1.8], [30, 1.7]]
    assert det['status'] == 'exit code 1, no training log (see runs/det_1gpu.log)' and 'img_per_s' not in det
    table = (tmp_path / 'dist_scaling.md').read_text()
    assert '| cls | 2 | 128 × 2 | 0.625 | 0.01 | 409.6 | 0.8 | 3.0 | 1.9 → 1.7 | ok |' in table
    assert '| 20 | 1.8 | 1.8 |' in table
    assert json.loads((tmp_path / 'dist_scaling.json').read_text())['runs'] == result['runs']
    assert (tmp_path / 'dist_scaling_loss.png').read_bytes()[:4] == b'\x89PNG'


@SERIAL
def test_gpu_aug_recipe_prefetches_under_ddp(tmp_path):
    """The _gpu-aug recipe (PrefetchEpochBasedTrainLoop, the data preprocessor in a thread of each rank) on two
    processes: the same weights as mmengine's EpochBasedTrainLoop on two processes."""
    sys.path.insert(0, str(ROOT / 'tests'))
    from test_prefetch import GPU_AUG, tiny_recipe_options
    options = [o for o in tiny_recipe_options(tmp_path / 'data') if not o.startswith('train_dataloader.batch_size')]
    env = _two_process_env()
    weights = {}
    for loop in ('PrefetchEpochBasedTrainLoop', 'EpochBasedTrainLoop'):
        work_dir = tmp_path / loop
        result = subprocess.run(
            ['bash', str(ROOT / 'tools/dist_train.sh'), GPU_AUG, '2', '--work-dir', str(work_dir), '--cfg-options',
             *options, 'train_dataloader.batch_size=2', f'train_cfg.type={loop}'],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert 'Distributed training: True' in result.stdout + result.stderr
        checkpoint = _checkpoint(work_dir / 'epoch_1.pth')
        assert checkpoint['meta']['iter'] == 2   # 8 images, 2 ranks x 2 per step
        weights[loop] = checkpoint['state_dict']
    prefetched, plain = weights.values()
    assert prefetched.keys() == plain.keys() and all(torch.equal(prefetched[k], plain[k]) for k in plain)
