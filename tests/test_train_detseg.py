"""tools/train.py and tools/test.py on a real detection and a real segmentation config, on the synthetic sets.

Each task: train a few iterations with the tiny test backbone (validation and a checkpoint at the end), resume from
the work dir to train on from the saved iteration with the saved optimizer state, then evaluate the checkpoint with
tools/test.py. The tools' own entry points run in this process, with their command lines (a subprocess would spend
most of its time importing torch, mmdet and mmseg again). Only sizes change through --cfg-options: 128 px images,
narrow heads (32 channels), fewer proposals and sampled RoIs, and a handful of iterations.
"""
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.registry import DefaultScope

from _scripts import load_benchmark
from visionssm.mm.runner import load_local_checkpoint, train_main
from visionssm.mm.runner import test_main as evaluate_main  # (not a test)
from visionssm.mm.synthetic import dataset_cfg_options, make_synthetic_data

ROOT = Path(__file__).resolve().parents[1]
LOADERS = [f'{split}_dataloader' for split in ('train', 'val', 'test')]
QUIET_LOADERS = {f'{loader}.{key}': value for loader in LOADERS
                 for key, value in (('num_workers', 0), ('persistent_workers', False))}

DET_CONFIG = 'configs/detection/mask-rcnn_vmamba-t_fpn_albu-1x_coco.py'
DET_OPTIONS = {
    'model.backbone.model': 'test_vmamba',
    'model.backbone.init_cfg': None,  # no ImageNet download
    'model.neck.in_channels': [16, 32, 64, 128],
    'model.neck.out_channels': 32,
    'model.rpn_head.in_channels': 32,
    'model.rpn_head.feat_channels': 32,
    'model.roi_head.bbox_roi_extractor.out_channels': 32,
    'model.roi_head.bbox_head.in_channels': 32,
    'model.roi_head.bbox_head.fc_out_channels': 64,
    'model.roi_head.mask_roi_extractor.out_channels': 32,
    'model.roi_head.mask_head.in_channels': 32,
    'model.roi_head.mask_head.conv_out_channels': 32,
    'model.train_cfg.rpn_proposal.max_per_img': 100,
    'model.train_cfg.rcnn.sampler.num': 32,
    'model.test_cfg.rpn.max_per_img': 50,
    'model.test_cfg.rcnn.score_thr': 0.0,  # an untrained head scores below the default 0.05: keep its boxes
    'model.test_cfg.rcnn.max_per_img': 20,
    'train_dataloader.batch_size': 1,
    'train_dataloader.dataset.pipeline.2.scale': (128, 128),  # Resize, before Albu
    'val_dataloader.dataset.pipeline.1.scale': (128, 128),
    'test_dataloader.dataset.pipeline.1.scale': (128, 128),
    'train_cfg.max_epochs': 1,
}
SEG_CONFIG = 'configs/segmentation/upernet_vim-t_8xb2-160k_ade20k-512x512.py'
SEG_OPTIONS = {
    'model.backbone.model': 'test_vim',
    'model.backbone.init_cfg': None,
    'model.data_preprocessor.size': (128, 128),
    'model.decode_head.in_channels': [32, 32, 32, 32],
    'model.decode_head.channels': 32,
    'model.auxiliary_head.in_channels': 32,
    'model.auxiliary_head.channels': 32,
    'train_dataloader.dataset.pipeline.2.scale': (256, 128),  # RandomResize
    'train_dataloader.dataset.pipeline.3.crop_size': (128, 128),
    'val_dataloader.dataset.pipeline.1.scale': (128, 128),
    'test_dataloader.dataset.pipeline.1.scale': (128, 128),
    'train_cfg.max_iters': 2,
    'train_cfg.val_interval': 2,
    'default_hooks.checkpoint.interval': 2,
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_synthetic_data(tmp_path_factory.mktemp('synthetic'), num_train=2, num_val=1, size=(128, 128))


def test_synthetic_sets_are_deterministic_and_well_formed(tmp_path):
    first = make_synthetic_data(tmp_path / 'a', num_train=3, num_val=1, size=(64, 96), seed=1)
    again = make_synthetic_data(tmp_path / 'b', num_train=3, num_val=1, size=(64, 96), seed=1)
    files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    assert len(files) == 3 + 1 + 2 + 2 * (3 + 1)  # coco images and annotation files, ade images and label maps
    assert all((tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes() for f in files)

    coco = json.loads((first['det'] / 'annotations' / 'instances_train.json').read_text())
    category_ids = {c['id'] for c in coco['categories']}
    assert len(category_ids) == 80 and coco['annotations']
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert ann['category_id'] in category_ids and 0 <= x and 0 <= y and x + w <= 96 and y + h <= 64
        assert 0 < ann['area'] <= w * h and len(ann['segmentation'][0]) >= 6

    labels = cv2.imread(str(next((first['seg'] / 'annotations' / 'training').glob('*.png'))), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (64, 96) and set(np.unique(labels)) <= {0, 1, 23, 120, 150}  # unlabeled, wall, shapes
    assert again == {'det': tmp_path / 'b' / 'coco', 'seg': tmp_path / 'b' / 'ade'}


def _argv(config: str, *args: str, options: dict, name: str) -> list:
    """A tools/train.py or tools/test.py command line: positional and flag arguments, then the config overrides."""
    def value(v):
        if isinstance(v, (list, tuple)):
            inner = ','.join(map(str, v))
            return f'[{inner}]' if isinstance(v, list) else f'({inner})'
        return str(v)
    # Distinct names per run: mmengine keys its global logger, message hub and visualizer by them.
    return [str(ROOT / config), *args, '--cfg-options', *(f'{k}={value(v)}' for k, v in options.items()),
            f'experiment_name={name}', f'visualizer.name={name}']


def _latest(work_dir: Path, pattern: str) -> Path:
    return sorted(work_dir.glob(f'*/{pattern}'))[-1]  # run directories are named by their start time


def _learning_rates(log: str) -> list:
    return [float(lr) for lr in re.findall(r'\(train\).* lr: ([-\de.+]+)', log)]


def _optimizer_steps(checkpoint: Path) -> int:
    state = load_local_checkpoint(str(checkpoint))['optimizer']['state']
    return int(max(s['step'] for s in state.values()))


def _train_resume_test(task, config, options, work_dir, first, second, resumed_epoch):
    """Runs the three commands; returns the log of the resumed run and the metrics of tools/test.py."""
    with DefaultScope.overwrite_default_scope('visionssm'):  # the runs switch mmengine's global default scope
        train_main(_argv(config, '--work-dir', str(work_dir), options=options, name=f'{task}_train'))
        saved = load_local_checkpoint(str(work_dir / first))['meta']
        assert saved['iter'] == 2 and _optimizer_steps(work_dir / first) == 2
        first_lrs = _learning_rates(_latest(work_dir, '*.log').read_text())

        more = {'train_cfg.max_epochs': 2} if first.startswith('epoch') else {'train_cfg.max_iters': 4}
        train_main(_argv(config, '--work-dir', str(work_dir), '--resume', options={**options, **more},
                         name=f'{task}_resumed'))
        log = _latest(work_dir, '*.log').read_text()
        assert f'resumed epoch: {resumed_epoch}, iter: 2' in log
        assert _learning_rates(log)[0] > first_lrs[-1]  # the warm-up goes on where it stopped, not from its start
        assert load_local_checkpoint(str(work_dir / second))['meta']['iter'] == 4
        assert _optimizer_steps(work_dir / second) == 4  # AdamW went on counting from the saved state

        evaluate_main(_argv(config, str(work_dir / second), '--work-dir', str(work_dir / 'test'), options=options,
                            name=f'{task}_test'))
    return log, json.loads(_latest(work_dir / 'test', '*.json').read_text().splitlines()[-1])


def test_detection_trains_resumes_and_evaluates(data, tmp_path):
    options = {**DET_OPTIONS, **QUIET_LOADERS, **dataset_cfg_options('det', data['det']),
               'default_hooks.logger.interval': 1, 'randomness.seed': 0}
    log, metrics = _train_resume_test('det', DET_CONFIG, options, tmp_path, 'epoch_1.pth', 'epoch_2.pth', 1)
    assert 'Epoch(train) [2][1/2]' in log and 'Epoch(train) [1]' not in log
    assert 0. <= metrics['coco/bbox_mAP'] <= 1. and 0. <= metrics['coco/segm_mAP'] <= 1.


def test_segmentation_trains_resumes_and_evaluates(data, tmp_path):
    options = {**SEG_OPTIONS, **QUIET_LOADERS, **dataset_cfg_options('seg', data['seg']),
               'default_hooks.logger.interval': 1, 'randomness.seed': 0}
    log, metrics = _train_resume_test('seg', SEG_CONFIG, options, tmp_path, 'iter_2.pth', 'iter_4.pth', 0)
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [1/' not in log
    assert 0. <= metrics['mIoU'] <= 100.


def test_train_gpu_driver_reports_a_run(tmp_path):
    """benchmarks/train_gpu.py (the GPU training measurement) end to end on the CPU: fp32, tiny model, 8 iterations."""
    driver = load_benchmark('train_gpu')
    small = {k: v for k, v in DET_OPTIONS.items() if k.startswith('model.') and k != 'model.backbone.init_cfg'}
    small.update({'train_dataloader.dataset.pipeline.2.scale': (128, 128),
                  'val_dataloader.dataset.pipeline.1.scale': (128, 128),
                  'test_dataloader.dataset.pipeline.1.scale': (128, 128), **QUIET_LOADERS})
    options = _argv('unused', options=small, name='unused')[2:-2]
    rows = driver.main(['--out', str(tmp_path), '--iters', '8', '--num-train', '4', '--num-val', '1', '--batch', '1',
                        '--workers', '0', '--size', '96', '128', '--profile', '2', '--time-limit', '600',
                        'det:configs/detection/mask-rcnn_vmamba-t_fpn_1x_coco.py:fp32', '--cfg-options', *options])
    row, = rows
    assert row['status'] == 'ok' and row['iters'] == 8 and row['nonfinite_losses'] == 0
    assert row['img_per_s'] > 0 and row['loss_scale_min'] is None  # fp32: no loss scaler
    assert row['test'].startswith('coco/bbox_mAP')
    # the step profile (CPU: no kernel time): two iterations, the forward split into the detector's parts
    profile = row['profile']
    assert profile['iters'] == 2 and profile['wall_ms'] > 0 and profile['kernel_ms'] is None
    assert {'backbone', 'neck', 'rpn_head', 'roi_head.bbox_head', 'roi_head.mask_head'} <= set(profile['forward'])
    assert 'backbone.model' not in profile['forward']   # the second level only where the first did not run
    assert profile['forward']['backbone']['host_ms'] > 0
    assert json.loads((tmp_path / row['config'].split('/')[-1].replace('.py', '_fp32') / 'step_profile.json')
                      .read_text())['host_ops']
    # the host time by phase over the iterations between the warm-up and the profile (4 and 5)
    assert row['host_time']['iters'] == 2 and row['host_time']['backward'] > 0 and row['host_time']['wall'] > 0
    table = (tmp_path / 'train_gpu.md').read_text().splitlines()
    assert len(table) == 3 + 4 + 4 and table[-1].startswith('| `configs/detection/mask-rcnn_vmamba-t')
    # --report: one table of several output folders (a folder without a report is named on stderr)
    assert driver.report([str(tmp_path), str(tmp_path / 'unfinished')]) == (tmp_path / 'train_gpu.md').read_text()
    with pytest.raises(SystemExit):
        driver.main(['--out', str(tmp_path), 'det:configs/x.py:fp8'])


def test_train_gpu_times_the_windows_before_the_profile():
    """The profiled window and every later one ran slower on the GPU: s/iter comes from the warm windows before."""
    driver = load_benchmark('train_gpu')
    logs = [dict(step=step, time=t) for step, t in [(10, 3.7), (60, .13), (70, .13), (80, .13), (90, .35), (100, .15)]]
    assert [s['step'] for s in driver.steady_windows(logs, warmup=50, profile_start=85)] == [60, 70, 80]
    assert [s['step'] for s in driver.steady_windows(logs, warmup=50)] == [60, 70, 80, 90, 100]
    assert [s['step'] for s in driver.steady_windows(logs, warmup=50, profile_start=20)] == [10]   # short run
    assert driver.steady_windows(logs, warmup=50, profile_start=5) == logs


def test_train_gpu_reads_a_package_scoped_base_config():
    """``mmdet::...`` baselines (the Swin-T comparison) are read by inheriting from them: Config.fromfile alone
    takes the scoped name for a file path (FileNotFoundError on the GPU run)."""
    train_gpu = load_benchmark('train_gpu')
    cfg = train_gpu._base_config('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    assert cfg.model.backbone.type == 'SwinTransformer'


def _train_gpu_module():
    return load_benchmark('train_gpu')


def test_train_gpu_reads_every_frameworks_evaluation_line():
    """mmseg logs its evaluation as ``Iter(test)``, mmdet and mmpretrain as ``Epoch(test)``: both are reported (the
    first GPU UperNet runs read 'no metrics line')."""
    read = _train_gpu_module().test_metrics
    seg = ('12/05 18:09:41 - mmengine - INFO - Iter(test) [16/16]    aAcc: 35.9600  mIoU: 6.4200  mAcc: 80.2300  '
           'data_time: 0.0108  time: 0.2952')
    det = ('2026/12/05 18:01:02 - mmengine - INFO - Epoch(test) [16/16]    coco/bbox_mAP: 0.1990  '
           'coco/bbox_mAP_50: 0.5240')
    assert read('noise\n' + seg + '\n').startswith('aAcc: 35.9600  mIoU: 6.4200')
    assert read(det) == 'coco/bbox_mAP: 0.1990  coco/bbox_mAP_50: 0.5240'
    assert read('Iter(train) [300/300] loss: 1.0\n') == ''


def test_train_gpu_cut_run_keeps_its_log(tmp_path):
    """A run past ``--time-limit`` is killed with its process group and keeps what it logged."""
    import sys
    run = _train_gpu_module()._run_logged
    log = tmp_path / 'train.log'
    status = run([sys.executable, '-c', 'import time; print("iteration 1", flush=True); time.sleep(60)'], log, 2)
    assert status == 'cut after 2 s' and 'iteration 1' in log.read_text()
    assert run([sys.executable, '-c', 'raise SystemExit("bad config")'], log, 60) == 'failed (1): bad config'
    assert run([sys.executable, '-c', 'pass'], log, 0) == 'not run: no time left'


def test_train_gpu_stopped_by_a_signal_takes_its_run_along(tmp_path):
    """An outer ``timeout`` (SIGTERM) of the driver also ends the training it started: nothing keeps the GPU."""
    import signal
    import subprocess
    import sys
    import time
    marker = tmp_path / 'child.pid'
    child_code = f'import os, time; open({str(marker)!r}, "w").write(str(os.getpid())); time.sleep(60)'
    script = tmp_path / 'driver.py'
    script.write_text(
        'import pathlib, signal, sys\n'
        f'sys.path.insert(0, {str(ROOT / "benchmarks")!r})\n'
        'import train_gpu\n'
        'signal.signal(signal.SIGTERM, lambda s, f: sys.exit(1))\n'
        f'train_gpu._run_logged([sys.executable, "-c", {child_code!r}], pathlib.Path({str(tmp_path / "log")!r}), 120)\n')
    driver = subprocess.Popen([sys.executable, str(script)])
    for _ in range(100):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.1)
    child = int(marker.read_text())
    driver.send_signal(signal.SIGTERM)
    driver.wait(timeout=30)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_step_profile_hook_rejects_an_empty_window():
    from visionssm.mm.hooks import StepProfileHook
    with pytest.raises(ValueError, match='iters >= 1'):
        StepProfileHook(start=0, iters=0)


def test_step_profile_kernel_time_leaves_out_annotations():
    """The GPU timeline's mirrors of record_function ranges are no kernels (they doubled a Mask R-CNN step's)."""
    from types import SimpleNamespace

    import torch
    from visionssm.mm.hooks import StepProfileHook

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(key, device_type, us, annotation=False):
        return SimpleNamespace(key=key, device_type=device_type, is_user_annotation=annotation, count=2,
                               self_device_time_total=us, device_time_total=us, cpu_time_total=us,
                               self_cpu_time_total=us)
    events = [event('forward:backbone', cpu, 3000.), event('aten::mm', cpu, 400.),
              event('forward:backbone', cuda, 5000., annotation=True),
              event('Optimizer.step#AdamW.step', cuda, 1000., annotation=True),
              event('_scan_fwd_kernel', cuda, 1500.), event('nvjet_gemm', cuda, 500.)]
    hook = StepProfileHook(start=0, iters=2)
    hook._data_s = 0.
    summary = hook._summarize(SimpleNamespace(key_averages=lambda: events), wall=0.01, n=2)
    assert summary['kernel_ms'] == 1.0 and summary['gpu_busy'] == 0.2
    assert [k['name'] for k in summary['kernels']] == ['_scan_fwd_kernel', 'nvjet_gemm']


def test_detection_trains_under_bf16_autocast(data, tmp_path):
    """mmcv has no bf16 RoIAlign or CPU NMS: under bf16 autocast (``--amp`` on a CPU) Mask R-CNN stopped at its
    first NMS; visionssm.mm.precision runs them in float32."""
    options = {**DET_OPTIONS, **QUIET_LOADERS, **dataset_cfg_options('det', data['det']),
               'default_hooks.logger.interval': 1, 'randomness.seed': 0, 'train_cfg.val_interval': 2}
    with DefaultScope.overwrite_default_scope('visionssm'):
        train_main(_argv(DET_CONFIG, '--work-dir', str(tmp_path), '--amp', options=options, name='det_bf16'))
    log = _latest(tmp_path, '*.log').read_text()
    assert 'CPUAmpOptimWrapper' in log
    losses = [float(v) for v in re.findall(r'Epoch\(train\) +\[1\]\[\d/2\].* loss: ([-\de.+naif]+)', log)]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_float32_fallbacks_for_bf16_leave_other_dtypes_alone():
    import torch
    from mmcv.ops import batched_nms
    from visionssm.mm import precision

    precision.use_float32_where_mmcv_lacks_bf16()
    precision.use_float32_where_mmcv_lacks_bf16()   # idempotent: wrapped once
    from mmdet.models.losses import focal_loss
    assert not getattr(focal_loss._sigmoid_focal_loss.__wrapped__, precision._MARK, False)

    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    want, keep = batched_nms(boxes, scores, torch.zeros(3, dtype=torch.long), dict(type='nms', iou_threshold=0.5))
    got, keep_bf16 = batched_nms(boxes.bfloat16(), scores.bfloat16(), torch.zeros(3, dtype=torch.long),
                                 dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == keep_bf16.tolist() == [0, 2] and got.dtype == torch.float32

    seen = []
    wrapped = precision._float32_focal_loss(lambda pred, *a: seen.append(pred.dtype) or pred)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        wrapped(torch.zeros(2, 3, dtype=dtype), None)
    assert seen == [torch.float32, torch.float16, torch.float32]


def test_train_gpu_compares_a_compiled_recipe_with_the_compiled_bare_step(tmp_path, monkeypatch):
    """The bare benchmark takes the recipe's compile setting: a compiled recipe measured against an eager bare step
    (or the reverse) would compare two different things."""
    module = _train_gpu_module()
    commands = []
    monkeypatch.setattr(module, '_run_logged', lambda cmd, log, limit: commands.append(cmd) or 'ok')
    config = 'configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py'
    for compile in (False, True):
        row = module.bare_training_throughput(config, 'bf16', 128, tmp_path, None, compile)
        assert row == {'bare_status': 'benchmark reported no result'}   # no JSON written by the stand-in
    assert '--compile' not in commands[0] and '--compile' in commands[1]
    assert all('--fused-adamw' in c for c in commands)   # the recipe's AdamW is fused: the bare step's too
    assert [module._truthy(v) for v in ('True', 'dict(mode="max-autotune")', True)] == [True] * 3
    assert [module._truthy(v) for v in ('False', 'None', None, False, '0')] == [False] * 5


def test_train_gpu_reports_the_host_time_by_phase():
    module = _train_gpu_module()
    from visionssm.mm.hooks import HostTimeHook
    timing = dict(iters=3, **{p: float(k) for k, p in enumerate(HostTimeHook.PHASES)})
    row = dict(task='cls', config='c.py', precision='bf16', batch=128, status='ok', host_time=timing)
    table = module.to_markdown([row]).splitlines()
    assert table[-1] == '| `c.py` | bf16 | 3 | ' + ' / '.join(f'{k}.0' for k in range(len(HostTimeHook.PHASES))) + ' |'
    assert 'data / hooks_before / preprocess / forward' in table[-3]
