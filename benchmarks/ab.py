#!/usr/bin/env python
"""A/B throughput: this checkout's models against another git revision's, in one process, interleaved.

    python benchmarks/ab.py --baseline REV --models groupmamba_tiny vim_tiny [--modes infer,train]
        [--batch 128] [--img-size 224] [--precision bf16] [--rounds 7] [--json out.json]
        [--baseline-env VAR=VALUE ...]

Two benchmark runs in separate processes differ by a few percent on the same code (clocks, temperature, other
work on the machine); a change worth that much cannot be shown that way. Here both versions of a model live in one
process on one device, are timed in turn over several rounds, and each gets the median of its rounds.

The baseline (``--baseline``: a commit, branch or tag, or a ``git archive -o FILE.tar REV visionssm kernels`` file
for a machine whose checkout lacks the history) is materialized from git: ``visionssm/`` and ``kernels/``
(``kernels/`` installs as ``visionssm.kernels``, pyproject.toml) go into a temporary directory as the package
``visionssm_ab_<commit>``, with every ``visionssm`` name in its Python sources rewritten to that name. That renames
its absolute imports and also what would be shared between the two copies in one process:

* the ``torch.library`` ops (``visionssm::selective_scan`` and its backward): kernels/triton_scan.py defines them
  once per process, so an unrenamed second copy would call the first copy's kernels under ``torch.compile``;
* the timm model registry: the copy is imported, and its models built, with a private copy of timm's registry
  tables in place, so ``timm.create_model`` keeps building this checkout's models and the copy's models get their
  own default configs; each model is built by calling each side's registered entrypoint function directly.

``--baseline-env VAR=VALUE`` (repeatable) sets environment variables while the baseline side builds and runs, e.g.
``--baseline HEAD --baseline-env VISIONSSM_LAYER_NORM=torch`` times a kernel behind its switch against the same
code without it (the switches are read at each call).

timm's torch.fx leaf sets gain the copy's functions; that is additive and leaves this checkout's tracing as it was.
The current side is the working tree as it is, uncommitted changes included (the JSON records whether it is dirty).

Protocol (tools/benchmark.py's where it applies, with its helpers): random weights, the models' own drop_path_rate,
NCHW, a pool of 3 random batches made on the device before timing and shared by both sides; ``--precision`` as
there (bf16: autocast, TF32 off for the rest; cuDNN benchmark on). ``infer`` is eval under no_grad; ``train`` is a
forward, cross-entropy, backward and ``zero_grad(set_to_none=True)`` under autocast, without an optimizer
(tools/benchmark.py's ``fwd_bwd``, the model cards' training column). Each side warms up for ``--warmup``
iterations; the fastest warm-up iteration of either side past the first sets n, the iterations of one timed
segment of about ``--repeat-time`` s. Then ``--rounds`` rounds each time n iterations of the baseline, then n of
the current, bracketed by CUDA events after a synchronize. A side's img/s is batch / its median per-iteration time;
the speed-up is current / baseline. Peak memory per side is ``max_memory_allocated``, reset before each of its
segments, less the other side's weights and the pool's extra batches: what a process holding only that model
would reach (as tools/benchmark.py counts it).

Parity: where both models have the same state_dict keys and shapes, the baseline is loaded with the current
model's weights (so both also time the same weights) and max |Δ| of their logits is measured in fp32 (TF32 off) on
``--parity-batch`` random images, on the device: 0 or rounding-level for a pure speed change, larger for a change
of the numerics. With different keys the architectures differ and no parity is reported.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package is the current side, whatever else is installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.models import _registry as timm_registry  # noqa: E402

import visionssm  # noqa: E402  (registers the current models with timm)
from visionssm.benchmark import (  # noqa: E402
    _Clock, _autocast, _error, _free_memory, _is_oom, _random_batches, _set_precision, _sync, environment,
)

__all__ = ['Side', 'current_side', 'materialize', 'compare', 'format_table', 'main', 'MODES']

MODES = ('infer', 'train')
PACKAGE = 'visionssm'
# every table timm's register_model and build_model_with_cfg read or write
_TIMM_TABLES = ('_module_to_models', '_model_to_module', '_model_entrypoints', '_model_has_pretrained',
                '_model_default_cfgs', '_model_pretrained_cfgs', '_model_with_tags', '_module_to_deprecated_models',
                '_deprecated_models')
_PACKAGE_NAME = re.compile(rf'\b{PACKAGE}\b')   # not VISIONSSM_* environment knobs, not visionssm_* names


# ------------------------------------------------------------------------------------------- the two packages

@contextlib.contextmanager
def _timm_registry(tables: Optional[dict]):
    """timm's model registry is ``tables`` inside the block (None: timm's own)."""
    if tables is None:
        yield
        return
    own = {name: getattr(timm_registry, name) for name in _TIMM_TABLES}
    for name in _TIMM_TABLES:
        setattr(timm_registry, name, tables[name])
    try:
        yield
    finally:
        for name, table in own.items():
            setattr(timm_registry, name, table)


@dataclasses.dataclass
class Side:
    """One version of the package: its name in ``sys.modules`` and the timm registry its models are built under."""
    label: str
    package: str
    commit: Optional[str]
    registry: Optional[dict] = None     # None: timm's own (the current checkout's models)
    env: dict = dataclasses.field(default_factory=dict)   # environment variables set while this side runs

    def entrypoint(self, name: str) -> Callable:
        with _timm_registry(self.registry):
            fn = timm_registry._model_entrypoints.get(name)
        if fn is None:
            raise ValueError(f'{name!r} is not a registered model of the {self.label} ({self.package})')
        if not fn.__module__.startswith(f'{self.package}.'):
            raise ValueError(f'{name!r} is not a visionssm model (its entrypoint is in {fn.__module__})')
        return fn

    def build(self, name: str, img_size: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
        """The model from this side's entrypoint, initialised on ``device`` from ``seed``; ViT-style models (an
        ``img_size`` constructor argument) built for ``img_size``, as tools/benchmark.py does."""
        fn = self.entrypoint(name)
        with _timm_registry(self.registry), environ(self.env):
            with torch.device('meta'):
                probe = fn()
            kwargs = {}
            if 'img_size' in inspect.signature(type(probe)).parameters \
                    and probe.pretrained_cfg.get('input_size', (3, 224, 224))[-1] != img_size:
                kwargs['img_size'] = img_size
            torch.manual_seed(seed)
            with torch.device(device):
                model = fn(**kwargs)
        if not type(model).__module__.startswith(f'{self.package}.'):
            raise RuntimeError(f'{name} of the {self.label} is a {type(model).__module__} class, '
                               f'not one of {self.package}')
        return model


@contextlib.contextmanager
def environ(env: dict):
    """``os.environ`` updated with ``env`` inside the block, restored after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _git(*args: str) -> str:
    return subprocess.run(['git', '-C', str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def current_side() -> Side:
    import visionssm.kernels
    for module, folder in ((visionssm, PACKAGE), (visionssm.kernels, 'kernels')):
        if Path(module.__file__).resolve().parent != ROOT / folder:
            raise RuntimeError(f'{module.__name__} imports from {module.__file__}, not from this checkout ({ROOT}): '
                               'the current side would not be the code checked out here')
    try:
        commit = _git('rev-parse', 'HEAD')
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return Side('current', PACKAGE, commit)


_MATERIALIZED: dict[str, Side] = {}


def _resolve(rev: str) -> str:
    try:
        return _git('rev-parse', '--verify', '--quiet', f'{rev}^{{commit}}')
    except OSError as e:
        raise RuntimeError(f'git is needed to materialize the baseline: {e}') from e
    except subprocess.CalledProcessError as e:
        raise ValueError(f'--baseline {rev!r} is not a commit of the repository at {ROOT}') from e


def _archive(commit: str) -> bytes:
    present = _git('ls-tree', '--name-only', commit, PACKAGE, 'kernels').split()
    if PACKAGE not in present:
        raise ValueError(f'commit {commit[:12]} has no {PACKAGE}/ package')
    return subprocess.run(['git', '-C', str(ROOT), 'archive', '--format=tar', commit, *present],
                          capture_output=True, check=True).stdout


def _archive_commit(path: Path) -> tuple[bytes, str]:
    """A baseline saved as ``git archive`` output (for a machine whose checkout has no history): its bytes, and the
    commit git wrote into its header (the file name's stem if there is none)."""
    archive = path.read_bytes()
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            names = tar.getnames()
            commit = tar.pax_headers.get('comment') or path.stem
    except tarfile.TarError as e:
        raise ValueError(f'--baseline {str(path)!r} is not a tar archive ({e})') from e
    if not any(n.startswith(f'{PACKAGE}/') for n in names):
        raise ValueError(f'--baseline {str(path)!r} holds no {PACKAGE}/ package (make it with: git archive -o FILE '
                         f'REV {PACKAGE} kernels)')
    return archive, commit


def _extract(archive: bytes, dest: Path, package: str):
    """``visionssm/`` and ``kernels/`` of a ``git archive`` as the package ``dest/package`` (kernels as its
    subpackage), every ``visionssm`` name in the Python sources renamed ``package``."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():   # directories are made below; a tracked link (visionssm/kernels) is not needed
                continue
            top, _, rest = member.name.partition('/')
            target = dest / package / rest if top == PACKAGE else dest / package / 'kernels' / rest
            data = tar.extractfile(member).read()
            if target.suffix == '.py':
                data = _PACKAGE_NAME.sub(package, data.decode()).encode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def materialize(rev: str) -> Side:
    """Import ``rev``'s package as ``visionssm_ab_<commit>`` (once per process), its models registered in a private
    copy of timm's registry. ``rev`` is a git revision, or a file that ``git archive -o FILE REV visionssm kernels``
    wrote."""
    archive = None
    if rev.endswith('.tar') or Path(rev).is_file():
        if not Path(rev).is_file():
            raise ValueError(f'--baseline {rev!r}: no such file')
        archive, commit = _archive_commit(Path(rev))
    else:
        commit = _resolve(rev)
    if commit in _MATERIALIZED:
        return _MATERIALIZED[commit]
    # a plain tar's name may hold dots or dashes (mktemp's tmp.XXXX.tar): the package name must be an identifier
    package = f'{PACKAGE}_ab_' + re.sub(r'\W', '_', commit[:12])
    # kept for the life of the process: Triton reads a kernel's source file when it compiles it
    dest = Path(tempfile.mkdtemp(prefix=f'{package}_'))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    _extract(archive if archive is not None else _archive(commit), dest, package)
    init = dest / package / '__init__.py'
    spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    tables = copy.deepcopy({name: getattr(timm_registry, name) for name in _TIMM_TABLES})
    sys.modules[package] = module
    try:
        with _timm_registry(tables), warnings.catch_warnings():
            # the copy's names replace this checkout's in the private tables: expected, not worth a warning
            warnings.filterwarnings('ignore', message=r'Overwriting .* in registry')
            spec.loader.exec_module(module)
    except BaseException:
        for name in [m for m in sys.modules if m == package or m.startswith(f'{package}.')]:
            del sys.modules[name]
        raise
    side = Side('baseline', package, commit, tables)
    _MATERIALIZED[commit] = side
    return side


# ---------------------------------------------------------------------------------------------------- measuring

def _nbytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def parity(baseline: torch.nn.Module, current: torch.nn.Module, img_size: int, batch: int,
           device: torch.device, envs: Sequence[dict] = ({}, {})) -> dict:
    """Load the current weights into the baseline where the state_dicts match; max |Δ| of fp32 logits."""
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (baseline, current)]
    if shapes[0] != shapes[1]:
        return dict(same_weights=False, max_abs_diff=None, max_abs_logit=None)
    baseline.load_state_dict(current.state_dict())
    _set_precision('fp32', device)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
    logits = []
    for m, env in zip((baseline, current), envs):
        with torch.no_grad(), environ(env):
            logits.append(m.eval()(x).float())
    return dict(same_weights=True, max_abs_diff=(logits[0] - logits[1]).abs().max().item(),
                max_abs_logit=logits[1].abs().max().item())


@contextlib.contextmanager
def _side_named(k: int):
    """An error inside the block names the side that raised it: index ``k`` of (baseline, current). A CUDA fault
    surfaces at the next synchronize, which the timing loops make after each side's iterations."""
    try:
        yield
    except Exception as e:
        e.add_note(f'raised while running the {("baseline", "current")[k]} side')
        raise


def _failed(row: dict, e: BaseException, what: str) -> None:
    """Marks ``row`` failed with ``e`` and prints the traceback: the status holds one line, and after a CUDA fault
    the cleanup that follows raises errors of its own, which must not hide this one."""
    row['status'] = 'oom' if _is_oom(e) else _error(e) + ''.join(f' ({note})' for note in getattr(e, '__notes__', ()))
    print(f'[ab] {row["model"]} {what}:', file=sys.stderr)
    traceback.print_exception(e, file=sys.stderr)


def _release(models, device: torch.device, failed: bool) -> None:
    """Gradients dropped and the allocator's cache freed; after a failure, best effort (a CUDA fault is sticky: every
    later call on the device raises it again, and the first report of it is what counts)."""
    try:
        for model in models or ():
            model.zero_grad(set_to_none=True)
        _free_memory(device)
    except Exception:
        if not failed:
            raise


def time_pair(models: Sequence[torch.nn.Module], mode: str, precision: str, batch: int, img_size: int,
              device: torch.device, warmup: int, rounds: int, repeat_s: float, pool: int = 3,
              envs: Optional[Sequence[dict]] = None) -> list[dict]:
    """Time the models in turn, round by round; per model its per-iteration times and peak memory, each model
    run with its entry of ``envs`` in the environment."""
    training = mode == 'train'
    num_classes = getattr(models[0], 'num_classes', 1000) or 1000
    batches = _random_batches(pool, batch, img_size, num_classes, device, channels_last=False)
    autocast = _autocast(precision, device)
    _set_precision(precision, device)

    def stepper(model, env):
        model.train(training)

        def step(i: int):
            x, y = batches[i % len(batches)]
            with environ(env):
                if not training:
                    with torch.no_grad(), autocast:
                        model(x)
                    return
                with autocast:
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
            model.zero_grad(set_to_none=True)
        return step

    steps = [stepper(m, env) for m, env in zip(models, envs or [{}] * len(models))]
    warm = [[] for _ in models]
    for k, (step, times) in enumerate(zip(steps, warm)):
        with _side_named(k):
            for i in range(warmup):
                t0 = time.perf_counter()
                step(i)
                _sync(device)
                times.append(time.perf_counter() - t0)
    n = max(1, round(repeat_s / min(min(t[1:] or t) for t in warm)))
    cuda = device.type == 'cuda'
    # what the other side holds, and the pool's extra batches, are not this side's memory
    extra = sum(t.numel() * t.element_size() for t in batches[0]) * (len(batches) - 1)
    held = [_nbytes(m) for m in models]
    clock = _Clock(device)
    stats = [dict(times=[], peak_bytes=0, first_iter_s=w[0], iters_per_round=n) for w in warm]
    i = warmup
    for _ in range(rounds):
        for k, (step, s) in enumerate(zip(steps, stats)):
            _sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            with _side_named(k):
                start = clock.mark()
                for _ in range(n):
                    step(i)
                    i += 1
                s['times'].append(clock.seconds(start, clock.mark()) / n)
            if cuda:
                others = sum(held) - held[k]
                s['peak_bytes'] = max(s['peak_bytes'], torch.cuda.max_memory_allocated(device) - others - extra)
    for s in stats:
        s['peak_gib'] = s.pop('peak_bytes') / 2 ** 30 if cuda else None
    return stats


def compare(name: str, baseline: Side, current: Side, modes: Sequence[str], precision: str, batch: int,
            img_size: int, device: torch.device, warmup: int = 5, rounds: int = 7, repeat_s: float = 0.25,
            parity_batch: int = 8) -> list[dict]:
    """One row per mode for model ``name``: both sides' img/s, the speed-up, peak memory and the parity."""
    rows = [dict(model=name, mode=mode, precision=precision, img_size=img_size, batch_size=batch, status='ok')
            for mode in modes]
    models = None
    try:
        models = [side.build(name, img_size, device) for side in (baseline, current)]
        assert type(models[0]).__module__ != type(models[1]).__module__, 'both sides built from the same module'
        info = dict(params_m=sum(p.numel() for p in models[1].parameters()) / 1e6,
                    baseline_module=type(models[0]).__module__, current_module=type(models[1]).__module__,
                    **parity(*models, img_size, min(parity_batch, batch), device, (baseline.env, current.env)))
    except Exception as e:
        for row in rows:
            _failed(row, e, 'build and parity')
        _release(None, device, failed=True)
        return rows
    _release(None, device, failed=False)
    for row in rows:
        row.update(info)
        try:
            stats = time_pair(models, row['mode'], precision, batch, img_size, device, warmup, rounds, repeat_s,
                              envs=(baseline.env, current.env))
        except Exception as e:
            _failed(row, e, row['mode'])
            _release(models, device, failed=True)
            continue
        _release(models, device, failed=False)
        for side, s in zip(('baseline', 'current'), stats):
            median = statistics.median(s['times'])
            row.update({f'{side}_img_per_s': batch / median, f'{side}_ms': median * 1e3,
                        f'{side}_ms_rounds': [t * 1e3 for t in s['times']], f'{side}_peak_gib': s['peak_gib'],
                        f'{side}_first_iter_s': s['first_iter_s']})
        row.update(speedup=row['current_img_per_s'] / row['baseline_img_per_s'],
                   iters_per_round=stats[0]['iters_per_round'], rounds=rounds, warmup=warmup)
    del models
    _release(None, device, failed=any(row['status'] != 'ok' for row in rows))
    return rows


# ---------------------------------------------------------------------------------------------------- reporting

def _fmt(value, spec: str) -> str:
    return '–' if value is None else format(value, spec)


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: one row per model and mode."""
    lines = ['| model | mode | baseline img/s | current img/s | speed-up | peak GiB baseline / current | '
             'max \\|Δ\\| logits (fp32) | status |', '|' + '---|' * 8]
    for r in rows:
        peak = f"{_fmt(r.get('baseline_peak_gib'), '.2f')} / {_fmt(r.get('current_peak_gib'), '.2f')}"
        diff = _fmt(r.get('max_abs_diff'), '.2e') if r.get('same_weights', True) else 'weights differ'
        lines.append(f"| {r['model']} | {r['mode']} | {_fmt(r.get('baseline_img_per_s'), '.1f')} | "
                     f"{_fmt(r.get('current_img_per_s'), '.1f')} | {_fmt(r.get('speedup'), '.3f')}× | {peak} | "
                     f"{diff} | {r['status']} |")
    return '\n'.join(lines)


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(',') if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f'modes must be a comma-separated subset of {MODES}, got {text!r}')
    return modes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--baseline', required=True, help='git revision to compare against (commit, branch, tag), or a git archive .tar of it')
    p.add_argument('--models', nargs='+', required=True, help='visionssm model names (timm names)')
    p.add_argument('--modes', type=_modes, default=list(MODES), help='comma-separated subset of infer,train')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--precision', choices=('fp32', 'tf32', 'bf16'), default='bf16')
    p.add_argument('--warmup', type=int, default=5, help='warm-up iterations per side')
    p.add_argument('--rounds', type=int, default=7, help='timed rounds; each times both sides in turn')
    p.add_argument('--repeat-time', type=float, default=0.25, help='seconds of one side\'s timed segment')
    p.add_argument('--parity-batch', type=int, default=8, help='images of the fp32 logit comparison')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--json', help='write the rows and the environment to this file')
    p.add_argument('--baseline-env', action='append', default=[], type=_env_setting, metavar='VAR=VALUE',
                   help='an environment variable set while the baseline side runs (repeatable)')
    return p


def _env_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition('=')
    if not sep or not name:
        raise argparse.ArgumentTypeError(f'{text!r} is not VAR=VALUE')
    return name, value


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parser().parse_args(argv)
    if min(args.batch, args.img_size, args.warmup, args.rounds, args.parity_batch) < 1 or args.repeat_time < 0:
        raise ValueError('--batch, --img-size, --warmup, --rounds and --parity-batch must be >= 1 and '
                         '--repeat-time >= 0')
    device = torch.device(args.device)
    current = current_side()
    baseline = dataclasses.replace(materialize(args.baseline), env=dict(args.baseline_env))
    rows = []
    for name in args.models:
        done = compare(name, baseline, current, args.modes, args.precision, args.batch, args.img_size, device,
                       args.warmup, args.rounds, args.repeat_time, args.parity_batch)
        rows += done
        # each model's rows as soon as they exist: a run cut short by a time limit still reports them
        print('\n'.join(format_table(done).splitlines()[2:]), flush=True)
    try:
        dirty = bool(_git('status', '--porcelain', '--untracked-files=no', '--', PACKAGE, 'kernels'))
    except (OSError, subprocess.CalledProcessError):
        dirty = None
    result = dict(baseline=dict(rev=args.baseline, commit=baseline.commit, package=baseline.package,
                                env=baseline.env),
                  current=dict(commit=current.commit, dirty=dirty),
                  protocol=dict(modes=args.modes, precision=args.precision, batch_size=args.batch,
                                img_size=args.img_size, warmup=args.warmup, rounds=args.rounds,
                                repeat_s=args.repeat_time, parity_batch=args.parity_batch),
                  environment=environment(args.device), rows=rows)
    with_env = ''.join(f' {k}={v}' for k, v in baseline.env.items())
    print(f'baseline {args.baseline} ({baseline.commit[:12]}){with_env} against the current checkout '
          f"({(current.commit or '?')[:12]}{', modified' if dirty else ''}), {args.precision}, "
          f'batch {args.batch}, {args.img_size}², {device}')
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    sys.exit(0 if all(r['status'] == 'ok' for r in main()['rows']) else 1)
