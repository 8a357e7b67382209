"""visionssm beside the official implementations of its families, on one CUDA machine, by one protocol.

    python benchmarks/official_compare.py build ROOT [--families vim groupmamba ...] [--arch 9.0] [--jobs 16]
    python benchmarks/official_compare.py measure ROOT [--models vim_tiny groupmamba_tiny ...] [--modes infer,train]
        [--batch 128] [--profile] [--json FILE] [--md FILE] [--time-budget S]

ROOT holds one folder per family, each a checkout of the official repository at the commit of the parity fixtures
(``git clone`` it there; only the paths in ``FAMILIES[...].runtime`` and the kernel sources are read):

    ROOT/vim              hustvl/Vim @ dd0358a             (mamba-1p1p1 and causal-conv1d kernels)
    ROOT/efficientvmamba  TerryPei/EfficientVMamba @ 0bc5ee2 (selective_scan ``core`` kernel)
    ROOT/groupmamba       Amshaker/GroupMamba @ c1800ed     (VMamba's ``core`` kernel, the one its model uses)
    ROOT/spatialmamba     EdwardChasel/Spatial-Mamba @ 71221eb (``oflex_rh`` kernel and ``dwconv2d``)
    ROOT/mambavision      NVlabs/MambaVision @ 7860a50      (mamba_ssm's ``selective_scan_fn``: built from Vim's
                                                            vendored mamba_ssm 1.1.1, whose kernel is mamba_ssm's)

``build`` compiles each family's CUDA extensions into ROOT/_ext/<family>/ for one GPU architecture, from a copy of
the sources with the two CUDA 13 changes the Mamba-derived kernels need (CCCL 3 removed ``cub::LaneId`` and
``cub::CTA_SYNC``); the official setup.py files are not run (they compile for six architectures). The official code
is never copied into this repository: ROOT lives outside it or in a folder git ignores.

``measure`` times the official model and ours, each in a fresh process, by the protocol of ``anchor_protocol.py``:
the official constructor's arguments of the released variant (table below), drop_path 0.2 on both sides, one
random batch of B x 3 x 224² reused, cuDNN benchmark on, TF32 off, bf16 autocast; inference under no_grad, training
as forward + cross-entropy + backward (gradients set to None); 10 warm-ups (8 in training), 7 repeats of ~0.6 s by
CUDA events, the median; peak memory after the warm-up. The parameter counts of both sides are recorded (they must
be equal: the same architecture). ``--profile`` adds one training step of each T model under torch.profiler and
splits its GPU time into the scan kernels, convolutions, GEMMs, normalisation, copies/elementwise and the rest.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Flags of the official setup.py files (the same in all five), for one architecture.
NVCC_FLAGS = ['-O3', '-std=c++17', '-U__CUDA_NO_HALF_OPERATORS__', '-U__CUDA_NO_HALF_CONVERSIONS__',
              '-U__CUDA_NO_BFLOAT16_OPERATORS__', '-U__CUDA_NO_BFLOAT16_CONVERSIONS__',
              '-U__CUDA_NO_BFLOAT162_OPERATORS__', '-U__CUDA_NO_BFLOAT162_CONVERSIONS__',
              '--expt-relaxed-constexpr', '--expt-extended-lambda', '--use_fast_math', '-lineinfo']
# What the official sources need to build today: CCCL 3 (CUDA 13) removed two CUB helpers, replaced by their plain
# CUDA equivalents; ATen/ATen.h no longer brings at::NoGradGuard (Spatial-Mamba's dwconv2d) in device code.
SOURCE_FIXES = {'cub::LaneId()': '(threadIdx.x & 31)', 'cub::CTA_SYNC()': '__syncthreads()',
                '#include <ATen/ATen.h>\n': '#include <ATen/ATen.h>\n#include <ATen/core/grad_mode.h>\n'}


@dataclasses.dataclass(frozen=True)
class Extension:
    name: str            # the module name the official code imports
    src_dir: str         # relative to the family's checkout; copied, patched, and the include path
    sources: tuple[str, ...]   # relative to src_dir


@dataclasses.dataclass(frozen=True)
class Family:
    repo: str
    commit: str
    extensions: tuple[Extension, ...]
    sys_path: tuple[str, ...]   # folders of the checkout the model file imports from
    model_file: str             # the file defining ``model_class``
    model_class: str
    runtime: tuple[str, ...]    # globs of what ``measure`` needs from the checkout (see ``pack``)
    ext_from: str = ''          # take the built extensions of another family (MambaVision: Vim's mamba_ssm)
    module_aliases: tuple[tuple[str, str], ...] = ()   # (import name the model tries, built extension)
    scan_kernels: str = r'selective_scan|causal_conv1d'


_MAMBA = 'mamba-1p1p1/csrc/selective_scan'
FAMILIES = {
    'vim': Family(
        'hustvl/Vim', 'dd0358a',
        (Extension('selective_scan_cuda', _MAMBA, ('selective_scan.cpp',) + tuple(
            f'selective_scan_{p}.cu' for p in ('fwd_fp32', 'fwd_fp16', 'fwd_bf16', 'bwd_fp32_real', 'bwd_fp32_complex',
                                               'bwd_fp16_real', 'bwd_fp16_complex', 'bwd_bf16_real',
                                               'bwd_bf16_complex'))),
         Extension('causal_conv1d_cuda', 'causal-conv1d/csrc', ('causal_conv1d.cpp', 'causal_conv1d_fwd.cu',
                                                                 'causal_conv1d_bwd.cu', 'causal_conv1d_update.cu'))),
        ('vim', 'mamba-1p1p1', 'causal-conv1d'), 'vim/models_mamba.py', 'VisionMamba',
        ('vim/*.py', 'mamba-1p1p1/mamba_ssm/**/*.py', 'causal-conv1d/causal_conv1d/*.py')),
    'efficientvmamba': Family(
        'TerryPei/EfficientVMamba', '0bc5ee2',
        (Extension('selective_scan_cuda_core', 'selective_scan/csrc/selective_scan',
                   ('selective_scan.cpp', 'selective_scan_core.cu', 'selective_scan_core_fwd2.cu',
                    'selective_scan_core_fwd3.cu', 'selective_scan_core_fwd4.cu')),),
        ('classification',), 'classification/models/vmamba_efficient.py', 'EfficientVSSM',
        # lib/models/__init__.py imports the whole model zoo of the repository's training code
        ('classification/models/vmamba_efficient.py', 'classification/lib/**/*.py'),
        # The model imports the kernel as selective_scan_vmamba_pt202.selective_scan_cuda_core, but the bundled
        # setup.py installs it as a top-level selective_scan_cuda_core, so out of the box the import fails and the
        # model silently falls back to mamba_ssm's kernel. Measured here: the kernel the authors wrote it for.
        module_aliases=(('selective_scan_vmamba_pt202', 'selective_scan_cuda_core'),)),
    'groupmamba': Family(
        'Amshaker/GroupMamba', 'c1800ed',
        (Extension('selective_scan_cuda_core', 'kernels/selective_scan/csrc/selective_scan',
                   ('cus/selective_scan.cpp', 'cus/selective_scan_core_fwd.cu', 'cus/selective_scan_core_bwd.cu')),),
        ('classification/models',), 'classification/models/groupmamba.py', 'GroupMamba',
        ('classification/models/groupmamba.py', 'classification/models/ss2d.py', 'classification/models/csms6s.py')),
    'spatialmamba': Family(
        'EdwardChasel/Spatial-Mamba', '71221eb',
        (Extension('selective_scan_cuda_oflex_rh', 'kernels/selective_scan/csrc/selective_scan',
                   ('cusoflexrh/selective_scan_oflex_rh.cpp', 'cusoflexrh/selective_scan_core_fwd.cu',
                    'cusoflexrh/selective_scan_core_bwd.cu')),
         Extension('dwconv2d', 'kernels/dwconv2d', ('dwconv2d.cpp', 'depthwise_fwd/launch.cu'))),
        ('classification/models', 'kernels/dwconv2d'), 'classification/models/spatialmamba.py', 'SpatialMamba',
        ('classification/models/spatialmamba.py', 'classification/models/utils.py', 'kernels/dwconv2d/Dwconv/*.py'),
        scan_kernels=r'selective_scan|depthwise|dwconv'),
    'mambavision': Family(
        'NVlabs/MambaVision', '7860a50', (), ('.', '../vim/mamba-1p1p1', '../vim/causal-conv1d'),
        'mambavision/models/mamba_vision.py', 'MambaVision', ('mambavision/__init__.py', 'mambavision/models/*.py'),
        ext_from='vim'),
}

_MV = dict(mlp_ratio=4, resolution=224, num_classes=1000, in_chans=3, img_size=[224, 224], num_heads=[2, 4, 8, 16],
           window_size=[8, 8, 14, 7])
_VIM = dict(patch_size=16, depth=24, rms_norm=True, residual_in_fp32=True, fused_add_norm=True, final_pool_type='mean',
            if_abs_pos_embed=True, if_rope=False, if_rope_residual=False, bimamba_type='v2', if_cls_token=True,
            use_middle_cls_token=True)
_EVM = dict(patch_size=4, in_chans=3, d_state=16, dt_rank='auto', ssm_ratio=2.0, attn_drop_rate=0.0, shared_ssm=False,
            softmax_version=False, drop_rate=0.0, mlp_ratio=0.0, patch_norm=True, downsample_version='v1',
            use_checkpoint=False, num_classes=1000)
_SPM = dict(d_state=1, dt_init='random', mlp_ratio=4.0, drop_rate=0.0, in_chans=3, patch_size=4, num_classes=1000)
_GM = dict(mlp_ratios=[8, 8, 4, 4], distillation=True, num_classes=1000)

# visionssm model -> (family, the official constructor's keyword arguments of the released variant: the parity
# manifests' ``official_builder.kwargs``; GroupMamba's norm_layer is added at build time).
VARIANTS = {
    'vim_tiny': ('vim', dict(_VIM, embed_dim=192, if_divide_out=True)),
    'vim_small': ('vim', dict(_VIM, embed_dim=384, if_divide_out=True)),
    # The base builder passes the misspelt ``if_devide_out`` (swallowed by **kwargs): if_divide_out stays False.
    'vim_base': ('vim', dict(_VIM, embed_dim=768, d_state=16, if_devide_out=True)),
    'efficientvmamba_tiny': ('efficientvmamba', dict(_EVM, depths=[2, 2, 4, 2], dims=48)),
    'efficientvmamba_small': ('efficientvmamba', dict(_EVM, depths=[2, 2, 4, 2], dims=64)),
    'efficientvmamba_base': ('efficientvmamba', dict(_EVM, depths=[2, 2, 9, 2], dims=96)),
    'groupmamba_tiny': ('groupmamba', dict(_GM, stem_hidden_dim=32, embed_dims=[64, 128, 348, 448], depths=[3, 4, 9, 3])),
    'groupmamba_small': ('groupmamba', dict(_GM, stem_hidden_dim=64, embed_dims=[64, 128, 348, 512],
                                            depths=[3, 4, 16, 3])),
    'groupmamba_base': ('groupmamba', dict(_GM, stem_hidden_dim=64, embed_dims=[96, 192, 424, 512],
                                           depths=[3, 6, 21, 3])),
    'spatialmamba_tiny': ('spatialmamba', dict(_SPM, dims=64, depths=[2, 4, 8, 4])),
    'spatialmamba_small': ('spatialmamba', dict(_SPM, dims=64, depths=[2, 4, 21, 5])),
    'spatialmamba_base': ('spatialmamba', dict(_SPM, dims=96, depths=[2, 4, 21, 5])),
    'mambavision_t': ('mambavision', dict(_MV, depths=[1, 3, 8, 4], dim=80, in_dim=32)),
    'mambavision_t2': ('mambavision', dict(_MV, depths=[1, 3, 11, 4], dim=80, in_dim=32)),
    'mambavision_s': ('mambavision', dict(_MV, depths=[3, 3, 7, 5], dim=96, in_dim=64)),
    'mambavision_b': ('mambavision', dict(_MV, depths=[3, 3, 10, 5], dim=128, in_dim=64, layer_scale=1e-5,
                                          layer_scale_conv=None)),
}
DROP_PATH = 0.2


# ---------------------------------------------------------------------------------------------------------- build
def build(root: Path, families, arch: str, jobs: int, missing_only: bool = False) -> dict:
    """Compile each family's extensions into root/_ext/<family>/; returns {family: {extension: seconds or error}}.
    Each extension builds in a fresh process: torch renames a second extension of a name already loaded
    (EfficientVMamba's and GroupMamba's kernels are both ``selective_scan_cuda_core``). With missing_only, an
    extension already there that imports (carried, or built before) is kept."""
    report = {}
    for fam_name in families:
        fam = FAMILIES[fam_name]
        out = root / '_ext' / fam_name
        report[fam_name] = {}
        for ext in fam.extensions:
            if missing_only and _imports(out, ext.name):
                result = 'present'
            elif not (root / fam_name / ext.src_dir).is_dir():
                result = f'error: {root / fam_name / ext.src_dir} not found (clone {fam.repo} into {root / fam_name})'
            else:
                done = subprocess.run([sys.executable, __file__, '_build_one', str(root), fam_name, ext.name, arch,
                                       str(jobs)], capture_output=True, text=True)
                result = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else \
                    f'error: {(done.stdout + done.stderr).strip()[-3000:]}'
            report[fam_name][ext.name] = result
            print(f'[build] {fam_name}/{ext.name}: {result}', flush=True)
    return report


def build_one(root: Path, fam_name: str, ext_name: str, arch: str, jobs: int) -> float:
    """Copy one extension's sources, apply SOURCE_FIXES, compile for ``arch``; returns seconds."""
    from torch.utils.cpp_extension import load
    ext = next(e for e in FAMILIES[fam_name].extensions if e.name == ext_name)
    os.environ['MAX_JOBS'] = str(jobs)
    os.environ['TORCH_CUDA_ARCH_LIST'] = arch
    sm = arch.replace('.', '')
    out = root / '_ext' / fam_name
    work = out / 'src' / ext.name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root / fam_name / ext.src_dir, work)   # sources are relative to src_dir, also the include path
    _apply_source_fixes(work)
    t0 = time.time()
    build_dir = _mkdir(out / 'build' / ext.name)
    load(ext.name, [str(work / s) for s in ext.sources], extra_cflags=['-O3', '-std=c++17'],
         extra_cuda_cflags=NVCC_FLAGS + [f'-gencode=arch=compute_{sm},code=sm_{sm}'],
         extra_include_paths=[str(work)], build_directory=str(build_dir), verbose=False)
    shutil.copy2(build_dir / f'{ext.name}.so', out / f'{ext.name}.so')
    return round(time.time() - t0, 1)


def _imports(folder: Path, name: str) -> bool:
    code = f'import sys; sys.path.insert(0, {str(folder)!r}); import torch, {name}'
    return subprocess.run([sys.executable, '-c', code], capture_output=True).returncode == 0


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _apply_source_fixes(folder: Path) -> None:
    for f in folder.rglob('*'):
        if f.suffix in ('.cuh', '.h', '.cu', '.cpp') and f.is_file():
            text = f.read_text()
            new = functools.reduce(lambda t, kv: t.replace(*kv), SOURCE_FIXES.items(), text)
            if new != text:
                f.write_text(new)


def pack(root: Path, dest: Path, exclude=(), families=None) -> int:
    """Copy what ``measure`` needs (runtime files and built extensions) into dest, for ``families`` (default all;
    with the family whose kernels one borrows); an extension named in ``exclude`` travels as its sources instead,
    for ``build --missing-only`` on the GPU machine. Returns bytes."""
    families = set(families or FAMILIES)
    families |= {FAMILIES[f].ext_from for f in families if FAMILIES[f].ext_from}
    def copy(f: Path, target: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        return f.stat().st_size

    total = 0
    for fam_name, fam in FAMILIES.items():
        if fam_name not in families:
            continue
        files = [f for pattern in fam.runtime for f in (root / fam_name).glob(pattern)]
        files += [f for ext in fam.extensions if ext.name in exclude
                  for f in (root / fam_name / ext.src_dir).rglob('*') if f.is_file()]
        total += sum(copy(f, dest / fam_name / f.relative_to(root / fam_name)) for f in files)
        total += sum(copy(so, dest / '_ext' / fam_name / so.name) for so in (root / '_ext' / fam_name).glob('*.so')
                     if so.name.split('.')[0] not in exclude)
    return total


# -------------------------------------------------------------------------------------------- official model import
def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _install_shims() -> None:
    """Stand-ins for imports the official model files make but a forward pass does not use."""
    fv = _stub('fvcore')   # FLOP counting only
    fv.nn = _stub('fvcore.nn', **{n: (lambda *a, **k: None)
                                  for n in ('FlopCountAnalysis', 'flop_count_str', 'flop_count', 'parameter_count')})
    # mamba_ssm's language-model generation helpers import transformers classes that newer releases removed.
    _stub('mamba_ssm.utils.generation', GenerationMixin=type('GenerationMixin', (), {}))
    _stub('mamba_ssm.utils.hf', load_config_hf=None, load_state_dict_hf=None)


def official_model(root: Path, model: str, drop_path: float = DROP_PATH):
    import torch.nn as nn
    fam_name, kwargs = VARIANTS[model]
    fam = FAMILIES[fam_name]
    base = root / fam_name
    ext = root / '_ext' / (fam.ext_from or fam_name)
    for p in reversed((str(ext),) + tuple(str((base / p).resolve()) for p in fam.sys_path)):
        sys.path.insert(0, p)
    _install_shims()
    for alias, built in fam.module_aliases:
        _stub(alias, **{built: importlib.import_module(built)})
    kwargs = dict(kwargs, drop_path_rate=drop_path)
    if fam_name == 'groupmamba':
        kwargs['norm_layer'] = functools.partial(nn.LayerNorm, eps=1e-6)
    if fam_name == 'mambavision':   # a package with relative imports
        module = importlib.import_module('mambavision.models.mamba_vision')
    else:
        spec = importlib.util.spec_from_file_location(Path(fam.model_file).stem, base / fam.model_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return getattr(module, fam.model_class)(**kwargs)


def our_model(model: str, drop_path: float = DROP_PATH):
    import timm
    import visionssm  # noqa: F401
    return timm.create_model(model, drop_path_rate=drop_path)


# -------------------------------------------------------------------------------------------------------- measure
def _logits(out):
    # GroupMamba (distillation) returns (head, dist_head) in training, Vim a tensor: reduce to one tensor
    return out[0] if isinstance(out, (tuple, list)) else out


def measure_one(root: Path, side: str, model: str, modes, batch: int, profile: bool) -> list[dict]:
    """Build one side's model once and time it in each mode; one row per mode."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from anchor_protocol import _events_ms   # the same CUDA-event timing as the anchor protocol
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    net = (official_model(root, model) if side == 'official' else our_model(model)).cuda()
    common = dict(side=side, model=model, batch=batch, params=sum(p.numel() for p in net.parameters()),
                  build_s=round(time.time() - t0, 1))
    x = torch.randn(batch, 3, 224, 224, device='cuda')
    y = torch.randint(0, 1000, (batch,), device='cuda')
    rows = []
    for mode in modes:
        train = mode == 'train'
        net.train(train)

        def step():
            if train:
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    loss = F.cross_entropy(_logits(net(x)).float(), y)
                loss.backward()
                for p in net.parameters():
                    p.grad = None
            else:
                with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
                    net(x)

        try:
            for _ in range(8 if train else 10):
                step()
            torch.cuda.synchronize()
            n = max(1, round(600 / _events_ms(step, 2)))
            torch.cuda.reset_peak_memory_stats()
            times = [_events_ms(step, n) for _ in range(7)]
        except Exception as exc:   # e.g. out of memory: record it, go on with the next mode
            rows.append(dict(common, mode=mode, status=f'error: {type(exc).__name__}: {exc}'[:1500]))
            torch.cuda.empty_cache()
            continue
        ms = statistics.median(times)
        row = dict(common, mode=mode, img_s=round(batch * 1e3 / ms, 1), ms=round(ms, 3),
                   spread=round((max(times) - min(times)) / ms, 3),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))
        if profile and train:
            row['profile'] = _profile(step, FAMILIES[VARIANTS[model][0]].scan_kernels if side == 'official'
                                      else r'_scan|selective_scan')
        rows.append(row)
        print(json.dumps(row), flush=True)   # streamed: a later crash keeps what was measured
    return rows


KERNEL_CLASSES = (('gemm', r'gemm|cutlass|sm90_xmma|cublas|matmul|_mm_'), ('conv', r'conv|cudnn|implicit'),
                  ('norm', r'norm'), ('copy/elementwise', r'elementwise|copy|vectorized|reduce|cat|index|fill'))


def _profile(step, scan_pattern: str) -> dict:
    """GPU time of one step by kernel class (ms), and the ten longest kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    by_class, kernels = {}, {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = ev.device_time if hasattr(ev, 'device_time') else ev.cuda_time
        name = ev.name
        cls = 'scan' if re.search(scan_pattern, name) else next(
            (c for c, pat in KERNEL_CLASSES if re.search(pat, name, re.I)), 'other')
        by_class[cls] = by_class.get(cls, 0.0) + us / 1e3
        kernels[name] = kernels.get(name, 0.0) + us / 1e3
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:10]
    return dict(ms_by_class={k: round(v, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
                total_ms=round(sum(by_class.values()), 3), top=[(k[:120], round(v, 3)) for k, v in top])


def measure(root: Path, models, modes, batch: int, profile: bool, budget: float, json_path: Path | None,
            append: bool = False) -> list:
    """Each model's official and our side, in that order, each in a fresh process. With append, the rows already in
    json_path are kept (their models measured again are replaced), so that one table can gather several runs."""
    rows, deadline = [], time.time() + budget
    if append and json_path and json_path.is_file():
        rows = [r for r in json.loads(json_path.read_text())['results'] if r['model'] not in models]
    for model in models:
        for side in ('official', 'ours'):
            left = deadline - time.time()
            if left < 20:
                rows += [dict(side=side, model=model, mode=m, status='skipped (time budget)') for m in modes]
                continue
            cmd = [sys.executable, __file__, '_one', str(root), side, model, ','.join(modes), str(batch)]
            if profile and model.endswith(('_tiny', '_t')):
                cmd.append('--profile')
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
                out, err = done.stdout, failure(done.returncode, done.stderr)
            except subprocess.TimeoutExpired as exc:
                out, err = exc.stdout or '', 'killed (time budget)'
                out = out.decode() if isinstance(out, bytes) else out
            got = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{')]
            seen = {r['mode'] for r in got}
            got += [dict(side=side, model=model, mode=m, status=f'error: {err}') for m in modes if m not in seen]
            for row in got:
                print(json.dumps({k: v for k, v in row.items() if k != 'profile'}), flush=True)
            rows += got
            if json_path:   # after each measurement: a later crash keeps what was measured
                json_path.write_text(json.dumps(dict(results=rows), indent=1))
    if json_path:
        json_path.write_text(json.dumps(dict(results=rows), indent=1))
    return rows


def failure(returncode: int, stderr: str) -> str:
    """Why a measuring process gave no row, first line first: its exception (the traceback from its last
    ``Traceback`` on), or, where it died without one (a crash in a CUDA extension), its exit status or signal, then
    the end of what it printed. Warnings that precede the failure are left out."""
    stderr = stderr.strip()
    start = stderr.rfind('Traceback (most recent call last)')
    if start >= 0:
        trace = stderr[start:]
        # the exception: the first unindented line after the header (warnings may follow the traceback)
        exc = next((ln for ln in trace.splitlines()[1:] if ln.strip() and not ln.startswith(' ')), '')
        return f'{exc}\n{trace}'[:1500]
    if returncode < 0:
        try:
            how = f'killed by {signal.Signals(-returncode).name}'
        except ValueError:
            how = f'killed by signal {-returncode}'
    else:
        how = f'exit status {returncode}'
    lines = [ln for ln in stderr.splitlines() if 'Warning' not in ln and not ln.startswith('  ')]
    return f"{how}, no traceback\n{chr(10).join(lines[-15:])}"[:1500]


def table(rows) -> str:
    """Markdown: one line per model, ours against official, by mode."""
    get = {(r['model'], r['mode'], r['side']): r for r in rows}
    lines = ['| model | params (ours / official) | mode | ours img/s | official img/s | speed-up | ours GiB |'
             ' official GiB | memory ratio |', '|---|---|---|---:|---:|---:|---:|---:|---:|']
    for model in dict.fromkeys(r['model'] for r in rows):
        for mode in dict.fromkeys(r['mode'] for r in rows if r['model'] == model):
            o, f = get.get((model, mode, 'ours'), {}), get.get((model, mode, 'official'), {})

            def cell(r, k):   # a failure's first line: a table row is one line
                return r[k] if k in r else r.get('status', 'n/a').split('\n', 1)[0].replace('|', '/')
            ratio = lambda a, b: f'{a / b:.2f}x' if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ''
            params = f"{o.get('params', '?'):,} / {f.get('params', '?'):,}" if 'params' in o and 'params' in f else ''
            lines.append(f"| {model} | {params} | {mode} | {cell(o, 'img_s')} | {cell(f, 'img_s')} | "
                         f"{ratio(o.get('img_s'), f.get('img_s'))} | {cell(o, 'peak_gib')} | {cell(f, 'peak_gib')} | "
                         f"{ratio(o.get('peak_gib'), f.get('peak_gib'))} |")
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('build', help='compile the official CUDA extensions into ROOT/_ext')
    b.add_argument('root', type=Path)
    b.add_argument('--families', nargs='+', default=[f for f in FAMILIES if FAMILIES[f].extensions],
                   choices=list(FAMILIES))
    b.add_argument('--arch', default='9.0', help='CUDA compute capability to compile for (default 9.0, Hopper)')
    b.add_argument('--jobs', type=int, default=os.cpu_count())
    b.add_argument('--missing-only', action='store_true', help='keep built extensions that import')
    p = sub.add_parser('pack', help='copy what measure needs (runtime files, built extensions) to DEST')
    p.add_argument('root', type=Path)
    p.add_argument('dest', type=Path)
    p.add_argument('--exclude', nargs='*', default=(), metavar='EXTENSION',
                   help='leave these built extensions out (e.g. a large one to build on the GPU machine)')
    p.add_argument('--families', nargs='+', choices=list(FAMILIES), help='only these (default: all)')
    m = sub.add_parser('measure', help='time official and visionssm models side by side')
    m.add_argument('root', type=Path)
    m.add_argument('--models', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    m.add_argument('--modes', default='infer,train')
    m.add_argument('--batch', type=int, default=128)
    m.add_argument('--profile', action='store_true', help='kernel-time breakdown of one training step (T models)')
    m.add_argument('--time-budget', type=float, default=1e9, help='seconds; measurements past it are skipped')
    m.add_argument('--json', type=Path)
    m.add_argument('--md', type=Path)
    m.add_argument('--append', action='store_true', help='keep the rows of other models already in --json')
    bo = sub.add_parser('_build_one')   # one extension in a fresh process (internal)
    for arg in ('root', 'family', 'extension', 'arch'):
        bo.add_argument(arg, type=Path if arg == 'root' else str)
    bo.add_argument('jobs', type=int)
    one = sub.add_parser('_one')   # one measurement in a fresh process (internal)
    one.add_argument('root', type=Path)
    one.add_argument('side', choices=('official', 'ours'))
    one.add_argument('model', choices=list(VARIANTS))
    one.add_argument('modes')
    one.add_argument('batch', type=int)
    one.add_argument('--profile', action='store_true')
    a = ap.parse_args(argv)
    if a.cmd == 'build':
        report = build(a.root.resolve(), a.families, a.arch, a.jobs, a.missing_only)
        (a.root / '_ext').mkdir(parents=True, exist_ok=True)
        (a.root / '_ext' / 'build_report.json').write_text(json.dumps(report, indent=1))
        return 1 if any(str(v).startswith('error') for r in report.values() for v in r.values()) else 0
    if a.cmd == 'pack':
        print(f'{pack(a.root.resolve(), a.dest.resolve(), a.exclude, a.families) / 2 ** 20:.1f} MiB copied to {a.dest}')
        return 0
    if a.cmd == '_build_one':
        print(build_one(a.root.resolve(), a.family, a.extension, a.arch, a.jobs))
        return 0
    if a.cmd == '_one':
        measure_one(a.root.resolve(), a.side, a.model, a.modes.split(','), a.batch, a.profile)   # prints its rows
        return 0
    modes = [x for x in a.modes.split(',') if x]
    bad = set(modes) - {'infer', 'train'}
    if bad:
        ap.error(f'--modes: unknown {sorted(bad)} (use infer, train)')
    rows = measure(a.root.resolve(), a.models, modes, a.batch, a.profile, a.time_budget, a.json, a.append)
    md = table(rows)
    print(md)
    if a.md:
        a.md.write_text(md + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
