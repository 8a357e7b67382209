"""Train detection / segmentation / classification configs for a fixed number of iterations and report what a user
sees: time per iteration, images/s, peak memory, whether the loss fell, non-finite losses and the fp16 loss scale;
then evaluate the last checkpoint with ``tools/test.py``. Each run is ``tools/train.py`` in its own process, on a
synthetic COCO / ADE20K set or ImageNet folder written by ``tools/make_synthetic_data.py`` (the configs' own
pipelines apply: for classification the full recipe, RandAugment, random erasing, Mixup/CutMix and EMA).

    python benchmarks/train_gpu.py --out DIR [--iters 300] [--num-train 64] [--size 480 640] [--profile 5] \\
        [--time-limit S] \\
        det:configs/detection/mask-rcnn_vmamba-t_fpn_1x_coco.py:fp16 \\
        det:mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py:bf16 \\
        seg:configs/segmentation/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py:fp16 \\
        cls:configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py:bf16 \\
        cls:configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k_gpu-aug.py:bf16

A run is ``TASK:CONFIG:PRECISION`` (precision fp16, bf16 or fp32; ``mmdet::`` / ``mmseg::`` configs work). Backbone
weights are not loaded (``init_cfg=None``): the machine may have no network, and speed does not depend on them.
Classification runs use ``--cls-batch`` images per step and a folder of ``--cls-classes`` x ``--cls-per-class``
JPEGs of ImageNet-like sizes (a ``_gpu-aug`` config decodes and augments them on the GPU, inside the step's time,
and its ``data s/iter`` is only the reading of files); a bf16/fp32 classification run is followed by
``tools/benchmark.py``'s training step of the bare backbone at the same batch, precision and drop path
(``bare_img_per_s``; ``pipeline_efficiency`` is the ratio). Writes ``DIR/train_gpu.json`` and
``DIR/train_gpu.md``; each run's logs stay in ``DIR/<run>/`` (streamed there: a run cut by ``--time-limit`` or
killed keeps them, and a cut run still reports its logged iterations; a run's training figures are written to
the JSON before its evaluation starts). ``--profile N`` adds
``visionssm.StepProfileHook`` over N iterations of each run: wall, data-wait and GPU kernel time per iteration, and
the forward's host and kernel time per model part (backbone, neck, heads). ``--report DIR [DIR ...]`` prints one
table of the reports of several output folders.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def _scalars(work_dir: Path) -> list[dict]:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not files:
        return []
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def _base_config(config: str):
    from mmengine.config import Config
    if '::' in config:  # mmdet:: / mmseg:: configs: Config.fromfile reads files only, so inherit from one
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / 'inherit.py'
            path.write_text(f'_base_ = [{config!r}]\n')
            return Config.fromfile(str(path))
    return Config.fromfile(str(ROOT / config))


def bare_training_throughput(config: str, precision: str, batch: int, out: Path,
                             time_limit: Optional[float] = None, compile: bool = False) -> dict:
    """tools/benchmark.py's training step (forward, loss, backward, AdamW) of the config's backbone alone, compiled
    with ``compile`` (the recipe's ``model.compile_backbone``), with a fused AdamW where the recipe's is."""
    cfg = _base_config(config)
    backbone = cfg.model.backbone
    fused = bool((cfg.get('optim_wrapper') or {}).get('optimizer', {}).get('fused'))
    name, drop_path = backbone['model_name'], backbone.get('drop_path_rate', 0.0)
    result = out / f'bare_{name}_{precision}.json'
    cmd = [sys.executable, str(ROOT / 'tools/benchmark.py'), '--no-baselines', '--no-progress', '--models', name,
           '--measure', f'train:{precision}@224', '--batch-sizes', str(batch), '--drop-path', str(drop_path),
           '--json', str(result)] + (['--compile'] if compile else []) + (['--fused-adamw'] if fused else [])
    status = _run_logged(cmd, out / 'bare_benchmark.log', time_limit)
    rows = json.loads(result.read_text()).get('results', []) if result.exists() else []
    ok = [r for r in rows if r.get('status') == 'ok' and r.get('img_per_s')]
    if status != 'ok' or not ok:
        return dict(bare_status=f'benchmark {status if status != "ok" else "reported no result"}')
    return dict(bare_model=name, bare_compiled=compile, bare_img_per_s=round(ok[0]['img_per_s'], 1),
                bare_peak_mem_gib=round(ok[0]['peak_mem_gib'], 2))


def _run_logged(cmd: list, log: Path, time_limit: Optional[float]) -> str:
    """Run ``cmd`` with its output streamed to ``log`` (a run cut short keeps what it wrote); 'ok' or what failed.

    The command runs in its own process group, killed with it when the time limit passes or when this process
    ends another way (an exception, or the SIGTERM of an outer ``timeout``): no training outlives the driver and
    takes the GPU from what runs next."""
    if time_limit is not None and time_limit <= 0:
        return 'not run: no time left'
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            code = proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            return f'cut after {time_limit:.0f} s'
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code == 0:
        return 'ok'
    lines = [l for l in log.read_text(errors='replace').strip().splitlines() if l.strip()]
    return f'failed ({code}): ' + (lines[-1][:300] if lines else '?')


def _truthy(value) -> bool:
    """A config value or a ``--cfg-options`` string (``True``, ``dict(mode=...)``) as a switch."""
    return value not in (None, False, 0, '', 'False', 'false', 'None', '0')


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else deadline - time.time()


def test_metrics(log: str) -> str:
    """The evaluation line of a tools/test.py log: mmdet / mmpretrain print ``Epoch(test)``, mmseg ``Iter(test)``,
    each followed by the ``[n/n]`` progress and the metrics."""
    lines = [l for l in log.splitlines() if '(test)' in l and any(k in l for k in ('bbox_mAP', 'mIoU', 'accuracy/top1'))]
    if not lines:
        return ''
    tail = lines[-1].split('(test)', 1)[1].strip()
    return tail.split(']', 1)[1].strip()[:300] if tail.startswith('[') else tail[:300]


def steady_windows(logs: list[dict], warmup: int, profile_start: int | None = None) -> list[dict]:
    """The logged windows (mmengine's means over ``log_every`` iterations, keyed by their last ``step``) that time
    the run: those past ``warmup`` iterations that end before a profile starts (profiled and later iterations are
    slower); with too few iterations, whatever ends before the profile, else every window."""
    before = [s for s in logs if profile_start is None or s.get('step', 0) <= profile_start]
    return [s for s in before if s.get('step', 0) > warmup] or before or logs


def run_one(task: str, config: str, precision: str, args, data_root: Path, out: Path,
            save=lambda row: None) -> dict:
    from visionssm.mm.synthetic import dataset_cfg_options
    name = f'{Path(config.split("::")[-1]).stem}_{precision}'
    work_dir = out / name
    work_dir.mkdir(parents=True, exist_ok=True)
    batch = args.cls_batch if task == 'cls' else args.batch
    num_train = args.cls_classes * args.cls_per_class if task == 'cls' else args.num_train
    per_epoch = max(1, num_train // batch)
    epochs = math.ceil(args.iters / per_epoch)
    log_every = max(1, min(10, args.iters // 5))
    # the config's own hooks (EMA in the classification recipes) stay; the run adds its checks
    hooks = list(_base_config(config).get('custom_hooks', [])) + [dict(type='visionssm.LossScaleHook')]
    if task == 'det':  # mmdet's check stops the run at the first non-finite loss (mmseg and mmengine have none)
        hooks.append(dict(type='mmdet.CheckInvalidLossHook', interval=1))
    # The profile takes the run's last iterations and the timed windows end before it: on an H100 the logged windows
    # that held a profile ran 2-3x slower (the profiler's start and its summary), and every later one 8-13% slower.
    profile_start = max(0, args.iters - args.profile) if args.profile else None
    if args.profile:
        hooks.append(dict(type='visionssm.StepProfileHook', iters=args.profile, start=profile_start))
    # host time by phase, no profiler: the timed windows' iterations (after the warm-up, before the profile)
    warmup = min(50, args.iters // 2)
    host_iters = (profile_start if profile_start is not None else args.iters) - warmup
    if host_iters >= 2:
        hooks.append(dict(type='visionssm.HostTimeHook', start=warmup, iters=host_iters))
    # a local config that inherits (so mmdet:: / mmseg:: configs work too) and sets what the run changes
    if task in ('det', 'cls'):
        loop = f'train_cfg = dict(max_epochs={epochs}, val_interval={epochs})\n' \
               f'default_hooks = dict(logger=dict(interval={log_every}), checkpoint=dict(interval={epochs}))\n'
    else:  # mmseg recipes are iteration-based
        loop = f'train_cfg = dict(max_iters={args.iters}, val_interval={args.iters})\n' \
               f'default_hooks = dict(logger=dict(interval={log_every}), checkpoint=dict(interval={args.iters}))\n'
    amp = '' if precision == 'fp32' else \
        f"optim_wrapper = dict(type='AmpOptimWrapper', dtype='{'float16' if precision == 'fp16' else 'bfloat16'}')\n"
    cfg_path = work_dir / 'config.py'
    cfg_path.write_text(
        f"_base_ = [{config if '::' in config else str(ROOT / config)!r}]\n"
        + ("model = dict(backbone=dict(init_cfg=None))\n" if task != 'cls' else '')
        # persistent workers need workers: --workers 0 (load in the main process) must switch them off
        + f"train_dataloader = dict(batch_size={batch}, num_workers={args.workers}, "
          f"persistent_workers={args.workers > 0})\n"
        f"custom_hooks = {hooks!r}\n"
        + loop + amp)
    opts = dict(dataset_cfg_options(task, data_root / {'det': 'coco', 'seg': 'ade', 'cls': 'imagenet'}[task]))
    opts.update(args.cfg_options or {})
    cmd = [sys.executable, str(ROOT / 'tools/train.py'), str(cfg_path), '--work-dir', str(work_dir),
           '--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]
    t0 = time.time()
    deadline = None if args.time_limit is None else t0 + args.time_limit   # training, evaluation and bare benchmark
    status = _run_logged(cmd, work_dir / 'train.log', args.time_limit)
    row = dict(task=task, config=config, precision=precision, batch=batch, workers=args.workers,
               wall_s=round(time.time() - t0, 1), status=status)
    logs = [s for s in _scalars(work_dir) if 'loss' in s and 'time' in s]
    if logs:
        steady = steady_windows(logs, warmup=warmup, profile_start=profile_start)
        t = statistics.median(s['time'] for s in steady)
        losses = [s['loss'] for s in logs]
        k = max(1, len(losses) // 5)
        scales = [s['loss_scale'] for s in logs if 'loss_scale' in s]
        row.update(iters=logs[-1].get('step'), s_per_iter=round(t, 4),
                   data_s_per_iter=round(statistics.median(s.get('data_time', 0) for s in steady), 4),
                   img_per_s=round(batch / t, 2), peak_mem_gib=round(max(s.get('memory', 0) for s in logs) / 1024, 2),
                   loss_first=round(statistics.mean(losses[:k]), 4), loss_last=round(statistics.mean(losses[-k:]), 4),
                   nonfinite_losses=sum(not math.isfinite(x) for x in losses),
                   loss_scale_min=min(scales) if scales else None, loss_scale_last=scales[-1] if scales else None)
    host_time = work_dir / 'host_time.json'
    if host_time.exists():
        row.update(host_time=json.loads(host_time.read_text()))
    profile = work_dir / 'step_profile.json'
    if profile.exists():
        from visionssm.mm.hooks import StepProfileHook
        prof = json.loads(profile.read_text())
        row.update(profile={k: prof.get(k) for k in StepProfileHook.SUMMARY_KEYS})
    save(row)   # the training's figures reach the report before the evaluation and the bare benchmark run
    ckpts = sorted(work_dir.glob('*.pth'), key=os.path.getmtime)
    if status == 'ok' and ckpts and args.test:
        test_cmd = [sys.executable, str(ROOT / 'tools/test.py'), str(cfg_path), str(ckpts[-1]),
                    '--work-dir', str(work_dir / 'test'), '--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]
        test_status = _run_logged(test_cmd, work_dir / 'test.log', _left(deadline))
        metrics = test_metrics((work_dir / 'test.log').read_text())
        row['test'] = metrics or (f'test {test_status}' if test_status != 'ok' else 'no metrics line')
    if task == 'cls' and precision != 'fp16' and args.bare:  # tools/benchmark.py has no fp16 autocast mode
        compiled = _truthy(opts.get('model.compile_backbone', _base_config(config).model.get('compile_backbone')))
        row.update(bare_training_throughput(config, precision, batch, work_dir, _left(deadline), compiled))
        if row.get('bare_img_per_s') and row.get('img_per_s'):
            row['pipeline_efficiency'] = round(row['img_per_s'] / row['bare_img_per_s'], 3)
    return row


def to_markdown(rows: list[dict]) -> str:
    head = ('| task | config | precision | batch | iters | s/iter | data s/iter | img/s | bare img/s | peak GiB | '
            'loss first → last | non-finite | min loss scale | test | status |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in rows:
        lines.append(f"| {r['task']} | `{r['config']}` | {r['precision']} | {r['batch']} | {r.get('iters', '–')} | "
                     f"{r.get('s_per_iter', '–')} | {r.get('data_s_per_iter', '–')} | {r.get('img_per_s', '–')} | "
                     f"{r.get('bare_img_per_s', '–')} | {r.get('peak_mem_gib', '–')} | "
                     f"{r.get('loss_first', '–')} → {r.get('loss_last', '–')} | {r.get('nonfinite_losses', '–')} | "
                     f"{r.get('loss_scale_min', '–')} | {r.get('test', '–')} | {r['status']} |")
    profiled = [r for r in rows if r.get('profile')]
    if profiled:
        lines += ['', '| config | precision | profiled iters | wall ms/iter | data wait ms | GPU kernel ms | GPU busy | '
                  'forward host ms / kernel ms by part |', '|---|---|---|---|---|---|---|---|']
        for r in profiled:
            p = r['profile']
            parts = ', '.join(f"{name} {v['host_ms']} / {v['kernel_ms'] if v['kernel_ms'] is not None else '–'}"
                              for name, v in (p.get('forward') or {}).items())
            lines.append(f"| `{r['config']}` | {r['precision']} | {p['iters']} | {p['wall_ms']} | {p['data_ms']} | "
                         f"{p['kernel_ms'] if p['kernel_ms'] is not None else '–'} | "
                         f"{p['gpu_busy'] if p['gpu_busy'] is not None else '–'} | {parts} |")
    timed = [r for r in rows if r.get('host_time')]
    if timed:
        from visionssm.mm.hooks import HostTimeHook
        lines += ['', '| config | precision | iters | host ms per iteration (median): '
                  + ' / '.join(HostTimeHook.PHASES) + ' |', '|---|---|---|---|']
        for r in timed:
            h = r['host_time']
            lines.append(f"| `{r['config']}` | {r['precision']} | {h['iters']} | "
                         + ' / '.join(str(h.get(p, '–')) for p in HostTimeHook.PHASES) + ' |')
    return '\n'.join(lines) + '\n'


def report(dirs: list[str]) -> str:
    """One table of the rows in ``DIR/train_gpu.json`` of several output folders (e.g. runs made concurrently)."""
    rows = []
    for d in dirs:
        path = Path(d) / 'train_gpu.json'
        if path.exists():
            rows += json.loads(path.read_text())
        else:
            print(f'[train_gpu] {path}: no report (the run did not finish)', file=sys.stderr)
    return to_markdown(rows) if rows else ''


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--report']:
        print(report(argv[1:]), end='')
        return []
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', metavar='TASK:CONFIG:PRECISION')
    p.add_argument('--out', required=True, type=Path)
    p.add_argument('--iters', type=int, default=300)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--workers', type=int, default=8)
    p.add_argument('--num-train', type=int, default=64)
    p.add_argument('--num-val', type=int, default=16)
    p.add_argument('--size', type=int, nargs=2, default=(480, 640), metavar=('HEIGHT', 'WIDTH'))
    p.add_argument('--cls-batch', type=int, default=128, help='classification: images per step (default 128)')
    p.add_argument('--cls-classes', type=int, default=1000, help='classification: classes of the JPEG folder')
    p.add_argument('--cls-per-class', type=int, default=4, help='classification: training JPEGs per class')
    p.add_argument('--no-bare', dest='bare', action='store_false',
                   help='classification: skip the bare-backbone training benchmark')
    p.add_argument('--no-test', dest='test', action='store_false',
                   help='skip the evaluation of the checkpoint with tools/test.py')
    p.add_argument('--time-limit', type=float, default=None, metavar='S',
                   help='seconds each run may take: its training, evaluation and bare benchmark together; a training '
                        'cut there keeps its logged iterations in the report (status "cut after S s")')
    p.add_argument('--profile', type=int, default=0, metavar='N',
                   help='profile the last N training iterations of each run (visionssm.StepProfileHook): wall, data wait '
                        'and GPU kernel time per iteration, per model part; DIR/<run>/step_profile.json (s/iter is '
                        'timed on the windows before it)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='passed to every tools/train.py and tools/test.py call (e.g. a smaller model for a smoke run)')
    args = p.parse_args(argv)
    args.cfg_options = dict(o.split('=', 1) for o in args.cfg_options)
    runs = []
    for spec in args.runs:
        task, _, rest = spec.partition(':')
        config, _, precision = rest.rpartition(':')
        if task not in ('det', 'seg', 'cls') or precision not in ('fp16', 'bf16', 'fp32') or not config:
            p.error(f'run {spec!r}: expected TASK:CONFIG:PRECISION with TASK det|seg|cls and PRECISION '
                    'fp16|bf16|fp32')
        runs.append((task, config, precision))
    from visionssm.mm.synthetic import make_synthetic_data
    data_root = args.out / 'data'
    tasks = sorted({task for task, _, _ in runs})
    make_synthetic_data(data_root, args.num_train, args.num_val, tuple(args.size), 0, tasks=tasks,
                        num_classes=args.cls_classes, train_per_class=args.cls_per_class, val_per_class=1)
    rows = []
    for task, config, precision in runs:
        print(f'[train_gpu] {task} {config} {precision}', flush=True)
        save = lambda row: (args.out / 'train_gpu.json').write_text(json.dumps(rows + [row], indent=1))  # noqa: E731
        rows.append(run_one(task, config, precision, args, data_root, args.out, save))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / 'train_gpu.json').write_text(json.dumps(rows, indent=1))
    (args.out / 'train_gpu.md').write_text(to_markdown(rows))
    print(to_markdown(rows))
    return rows


if __name__ == '__main__':
    # an outer `timeout` stops this process with SIGTERM: exit instead, so the running command's group is killed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f'[train_gpu] stopped by signal {signum}'))
    main()
