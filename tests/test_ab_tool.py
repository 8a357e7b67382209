"""benchmarks/ab.py: the A/B tool against ``HEAD`` on a tiny model, on the CPU.

The baseline is this checkout's own ``HEAD``: in a clean checkout (CI's clone) both sides run the same code from
two packages, so their logits must agree to the bit. Skipped outside a git checkout.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from _scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _in_git_checkout() -> bool:
    if shutil.which('git') is None:
        return False
    done = subprocess.run(['git', '-C', str(ROOT), 'cat-file', '-e', 'HEAD:visionssm/__init__.py'],
                          capture_output=True)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _in_git_checkout(), reason='needs git and a git checkout with a HEAD commit')


@pytest.fixture(scope='module')
def ab():
    return load_benchmark('ab')


def test_ab_against_head(ab, tmp_path):
    out = tmp_path / 'ab.json'
    result = ab.main(['--baseline', 'HEAD', '--models', 'test_vmamba', '--modes', 'infer,train', '--img-size', '32',
                      '--batch', '2', '--warmup', '1', '--rounds', '1', '--repeat-time', '0', '--parity-batch', '2',
                      '--device', 'cpu', '--json', str(out)])
    head = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    package = f'visionssm_ab_{head[:12]}'
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result['baseline'] == dict(rev='HEAD', commit=head, package=package, env={})
    assert [(r['model'], r['mode']) for r in result['rows']] == [('test_vmamba', 'infer'), ('test_vmamba', 'train')]
    for row in result['rows']:
        assert row['status'] == 'ok', row['status']
        assert row['baseline_module'] == f'{package}.models.vmamba'
        assert row['current_module'] == 'visionssm.models.vmamba'
        assert row['same_weights'] and row['max_abs_logit'] > 0.01
        if not result['current']['dirty']:   # the same code on both sides (uncommitted edits would differ)
            assert row['max_abs_diff'] == 0.0
        for side in ('baseline', 'current'):
            assert row[f'{side}_img_per_s'] > 0 and len(row[f'{side}_ms_rounds']) == 1
            assert row[f'{side}_peak_gib'] is None    # max_memory_allocated is CUDA's
        assert row['speedup'] == pytest.approx(row['current_img_per_s'] / row['baseline_img_per_s'])
    assert 'test_vmamba | infer |' in ab.format_table(result['rows'])


def test_baseline_is_isolated(ab):
    """The copy has its own package, scan op namespace and timm registry; this checkout's are as they were."""
    baseline = ab.materialize('HEAD')
    assert ab.materialize('HEAD') is baseline                   # once per process
    assert baseline.entrypoint('test_vim').__module__ == f'{baseline.package}.models.vim'
    assert timm.models.model_entrypoint('test_vim').__module__ == 'visionssm.models.vim'
    assert type(timm.create_model('test_vim')).__module__ == 'visionssm.models.vim'
    scan = sys.modules[f'{baseline.package}.ops.selective_scan']
    assert scan.selective_scan is not sys.modules['visionssm.ops.selective_scan'].selective_scan
    if 'triton' in scan.BACKENDS:   # the copy's torch.library ops live in a namespace of their own
        assert hasattr(getattr(torch.ops, baseline.package), 'selective_scan')


def test_parity_needs_matching_weights(ab):
    current = ab.current_side()
    vmamba = current.build('test_vmamba', 32, torch.device('cpu'))
    vim = current.build('test_vim', 32, torch.device('cpu'))
    assert ab.parity(vmamba, vim, 32, 1, torch.device('cpu')) == \
        dict(same_weights=False, max_abs_diff=None, max_abs_logit=None)


def test_bad_arguments(ab):
    with pytest.raises(ValueError, match='not a commit'):
        ab.materialize('no-such-revision-anywhere')
    with pytest.raises(SystemExit):
        ab._parser().parse_args(['--baseline', 'HEAD', '--models', 'test_vim', '--modes', 'infer,latency'])
    baseline = ab.materialize('HEAD')
    with pytest.raises(ValueError, match='not a visionssm model'):
        baseline.entrypoint('resnet18')


def test_baseline_from_a_git_archive(ab, tmp_path):
    # a GPU machine's checkout may have no history: the baseline travels as `git archive` output
    tar = tmp_path / 'base.tar'
    subprocess.run(['git', '-C', str(ROOT), 'archive', '-o', str(tar), 'HEAD', 'visionssm', 'kernels'], check=True)
    head = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    assert ab._archive_commit(tar)[1] == head            # git writes the commit into the archive's header
    assert ab.materialize(str(tar)) is ab.materialize('HEAD')
    (tmp_path / 'junk.tar').write_bytes(b'not a tar file')
    with pytest.raises(ValueError, match='not a tar archive'):
        ab.materialize(str(tmp_path / 'junk.tar'))
    subprocess.run(['git', '-C', str(ROOT), 'archive', '-o', str(tmp_path / 'docs.tar'), 'HEAD', 'docs'], check=True)
    with pytest.raises(ValueError, match='holds no visionssm/ package'):
        ab.materialize(str(tmp_path / 'docs.tar'))
    with pytest.raises(ValueError, match='no such file'):
        ab.materialize(str(tmp_path / 'missing.tar'))


def test_baseline_from_a_plain_tar_with_a_dotted_name(ab, tmp_path):
    # `tar cf $(mktemp --suffix=.tar) visionssm kernels`: no commit in the header, so the package is named by the
    # file's stem, which must still make an importable package name
    tar = tmp_path / 'tmp.a-1.tar'
    subprocess.run(['tar', 'cf', str(tar), '-C', str(ROOT), '--exclude=visionssm/kernels', 'visionssm', 'kernels'],
                   check=True)
    side = ab.materialize(str(tar))
    assert side.package.isidentifier() and side.package.startswith('visionssm_ab_tmp_a_1')
    model = side.build('vmamba_tiny_s1l8', 64, torch.device('cpu')).eval()
    assert type(model).__module__.startswith(f'{side.package}.')
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_baseline_env_is_set_for_the_baseline_side_only(ab, monkeypatch):
    monkeypatch.delenv('AB_TEST_SWITCH', raising=False)

    class Probe(torch.nn.Module):   # records the switch at every forward
        def __init__(self):
            super().__init__()
            self.seen = []
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            self.seen.append(__import__('os').environ.get('AB_TEST_SWITCH'))
            return self.fc(x.mean((2, 3)))

    models = [Probe(), Probe()]
    ab.time_pair(models, 'infer', 'fp32', 2, 8, torch.device('cpu'), warmup=1, rounds=2, repeat_s=0,
                 envs=({'AB_TEST_SWITCH': 'off'}, {}))
    assert set(models[0].seen) == {'off'} and set(models[1].seen) == {None}
    assert 'AB_TEST_SWITCH' not in __import__('os').environ
    assert ab._parser().parse_args(['--baseline', 'HEAD', '--models', 'test_vim', '--baseline-env',
                                    'VISIONSSM_LAYER_NORM=torch']).baseline_env == [('VISIONSSM_LAYER_NORM', 'torch')]
    with pytest.raises(SystemExit):
        ab._parser().parse_args(['--baseline', 'HEAD', '--models', 'test_vim', '--baseline-env', 'no-value'])


def test_current_side_from_a_source_checkout_that_is_not_installed():
    # Run from a checkout with no install (a GPU machine's copy of the tree), `kernels/` is made visionssm.kernels by
    # visionssm/__init__.py; ab.py's current side reads it as an attribute of the package. `-S` skips site-packages'
    # .pth files, so the editable install's finder is not there; the packages' folders are put on the path as is.
    import site
    code = ('import sys; sys.path[1:1] = {paths!r}; sys.path.insert(0, "benchmarks"); import visionssm, ab; '
            'side = ab.current_side(); import visionssm.kernels as k; '
            'assert visionssm.kernels is k and k.__file__.startswith({root!r}), k.__file__; print(side.label)')
    done = subprocess.run([sys.executable, '-S', '-c', code.format(paths=site.getsitepackages(), root=str(ROOT))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith('current'), done.stderr[-2000:]


def test_a_failing_side_is_named_and_not_hidden_by_the_cleanup(ab, monkeypatch, capsys):
    class Faulty(torch.nn.Module):   # fails at its third forward, as a kernel fault surfaces at a later call
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError('illegal memory access')
            return self.fc(x.mean((2, 3)))

    with pytest.raises(RuntimeError, match='illegal memory access') as raised:
        ab.time_pair([torch.nn.Conv2d(3, 4, 1), Faulty()], 'infer', 'fp32', 2, 8, torch.device('cpu'), warmup=2,
                     rounds=2, repeat_s=0)
    assert raised.value.__notes__ == ['raised while running the current side']

    # after a CUDA fault every later call on the device raises too, the allocator's cleanup included: the row keeps
    # the first error, and its traceback is printed
    faulted = []

    def fault(*args, **kwargs):
        faulted.append(True)
        error = RuntimeError('illegal memory access')
        error.add_note('raised while running the baseline side')
        raise error

    def free_memory(device):
        if faulted:
            raise RuntimeError('the same illegal memory access, raised again')

    monkeypatch.setattr(ab, 'time_pair', fault)
    monkeypatch.setattr(ab, '_free_memory', free_memory)
    baseline = ab.materialize('HEAD')
    rows = ab.compare('test_vmamba', baseline, ab.current_side(), ['infer', 'train'], 'fp32', 2, 32,
                      torch.device('cpu'), warmup=1, rounds=1, repeat_s=0, parity_batch=1)
    assert [row['status'] for row in rows] == \
        ['error: RuntimeError: illegal memory access (raised while running the baseline side)'] * 2
    assert 'illegal memory access' in capsys.readouterr().err
