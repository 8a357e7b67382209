"""benchmarks/official_compare.py: the table of official variants, the CUDA 13 patch, the official-model import
plumbing (with a stand-in checkout: the official code is never part of this repository) and the report table."""
import json
import sys
from pathlib import Path

import pytest
import timm

import visionssm  # noqa: F401
from _scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT.parent / 'shared' / 'parity' / 'manifests'


@pytest.fixture(scope='module')
def oc():
    return load_benchmark('official_compare', 'official_compare')


def test_every_variant_is_a_registered_model_of_a_known_family(oc):
    registered = set(timm.list_models())
    for model, (family, kwargs) in oc.VARIANTS.items():
        assert model in registered, model
        assert family in oc.FAMILIES
        assert 'drop_path_rate' not in kwargs   # set by the protocol, the same on both sides
    # each family with kernels of its own names its sources; MambaVision borrows Vim's mamba_ssm build
    for name, fam in oc.FAMILIES.items():
        assert fam.extensions or oc.FAMILIES[fam.ext_from].extensions, name


@pytest.mark.skipif(not PARITY.is_dir(), reason='parity manifests not present')
def test_variant_arguments_equal_the_official_builders(oc):
    for model, (_, kwargs) in oc.VARIANTS.items():
        official = json.loads((PARITY / f'{model}.json').read_text())['official_builder']['kwargs']
        official = {k: v for k, v in official.items() if k not in ('drop_path_rate', 'norm_layer')}
        assert kwargs == official, model


def test_source_fixes_replace_what_cuda13_and_torch_removed(oc, tmp_path):
    src = tmp_path / 'k.cuh'
    src.write_text('int lane = cub::LaneId();\ncub::CTA_SYNC();\nint keep = cub::WarpReduce<int>;\n')
    (tmp_path / 'launch.cu').write_text('#include <ATen/ATen.h>\nat::NoGradGuard no_grad;\n')
    (tmp_path / 'notes.txt').write_text('cub::LaneId()')
    oc._apply_source_fixes(tmp_path)
    assert src.read_text() == 'int lane = (threadIdx.x & 31);\n__syncthreads();\nint keep = cub::WarpReduce<int>;\n'
    assert (tmp_path / 'launch.cu').read_text() == \
        '#include <ATen/ATen.h>\n#include <ATen/core/grad_mode.h>\nat::NoGradGuard no_grad;\n'
    assert (tmp_path / 'notes.txt').read_text() == 'cub::LaneId()'   # only C++/CUDA sources are touched


def test_official_model_imports_the_checkout_with_its_arguments(oc, tmp_path, monkeypatch):
    # a stand-in for ROOT/groupmamba: the model file imports a sibling module and fvcore (stubbed by the harness)
    models = tmp_path / 'groupmamba' / 'classification' / 'models'
    models.mkdir(parents=True)
    (models / 'ss2d_stub.py').write_text('TAG = "sibling"\n')
    (models / 'groupmamba.py').write_text(
        'import torch.nn as nn\nfrom fvcore.nn import flop_count\nfrom ss2d_stub import TAG\n'
        'class GroupMamba(nn.Module):\n'
        '    def __init__(self, **kw):\n'
        '        super().__init__(); self.kw = kw; self.tag = TAG; self.fc = nn.Linear(2, 2)\n')
    monkeypatch.setattr(sys, 'path', list(sys.path))
    before = dict(sys.modules)
    try:
        net = oc.official_model(tmp_path, 'groupmamba_tiny', drop_path=0.3)
    finally:   # the harness's stand-ins (fvcore, mamba_ssm helpers) must not leak into other tests
        for name in set(sys.modules) - set(before):
            del sys.modules[name]
        sys.modules.update(before)
    assert net.tag == 'sibling'
    assert net.kw['drop_path_rate'] == 0.3 and net.kw['embed_dims'] == [64, 128, 348, 448]
    norm = net.kw['norm_layer'](8)
    assert norm.eps == 1e-6


def test_pack_copies_only_what_measure_needs(oc, tmp_path):
    root, dest = tmp_path / 'root', tmp_path / 'dest'
    for rel in ('vim/vim/models_mamba.py', 'vim/vim/README.md', 'vim/mamba-1p1p1/mamba_ssm/ops/x.py',
                'vim/mamba-1p1p1/csrc/selective_scan/k.cu', '_ext/vim/selective_scan_cuda.so'):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text('x')
    oc.pack(root, dest)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file())
    assert got == ['_ext/vim/selective_scan_cuda.so', 'vim/mamba-1p1p1/mamba_ssm/ops/x.py', 'vim/vim/models_mamba.py']
    # an excluded extension travels as its sources, to be built on the GPU machine
    oc.pack(root, tmp_path / 'dest2', exclude=('selective_scan_cuda',))
    got = sorted(str(p.relative_to(tmp_path / 'dest2')) for p in (tmp_path / 'dest2').rglob('*') if p.is_file())
    assert got == ['vim/mamba-1p1p1/csrc/selective_scan/k.cu', 'vim/mamba-1p1p1/mamba_ssm/ops/x.py',
                   'vim/vim/models_mamba.py']
    # one family: MambaVision brings Vim's kernels (it borrows them), and nothing of the other families
    (root / 'groupmamba/classification/models/groupmamba.py').parent.mkdir(parents=True)
    (root / 'groupmamba/classification/models/groupmamba.py').write_text('x')
    (root / 'mambavision/mambavision/models/mamba_vision.py').parent.mkdir(parents=True)
    (root / 'mambavision/mambavision/models/mamba_vision.py').write_text('x')
    oc.pack(root, tmp_path / 'dest3', families=['mambavision'])
    got = sorted(str(p.relative_to(tmp_path / 'dest3')) for p in (tmp_path / 'dest3').rglob('*') if p.is_file())
    assert got == ['_ext/vim/selective_scan_cuda.so', 'mambavision/mambavision/models/mamba_vision.py',
                   'vim/mamba-1p1p1/mamba_ssm/ops/x.py', 'vim/vim/models_mamba.py']


def test_table_gives_speed_up_and_memory_ratio(oc):
    rows = [dict(side='ours', model='vim_tiny', mode='train', img_s=300.0, peak_gib=4.0, params=7),
            dict(side='official', model='vim_tiny', mode='train', img_s=100.0, peak_gib=8.0, params=7),
            dict(side='ours', model='vim_small', mode='train', img_s=50.0, peak_gib=2.0, params=9),
            dict(side='official', model='vim_small', mode='train', status='error: build failed')]
    md = oc.table(rows).splitlines()
    assert md[2].split('|')[6].strip() == '3.00x' and md[2].split('|')[9].strip() == '0.50x'
    assert 'error: build failed' in md[3] and md[3].split('|')[6].strip() == ''


def test_bad_modes_are_refused(oc, capsys):
    with pytest.raises(SystemExit):
        oc.main(['measure', 'root', '--modes', 'infer,fast'])
    assert "unknown ['fast']" in capsys.readouterr().err


def test_measure_appends_to_the_rows_of_an_earlier_run(oc, tmp_path):
    # official_h200.sh measures the families whose kernels are built while the rest compile, then the rest: one table
    report = tmp_path / 'official.json'
    earlier = [dict(side=s, model=m, mode='infer', img_s=1.0) for m in ('groupmamba_tiny', 'vim_tiny')
               for s in ('official', 'ours')]
    report.write_text(json.dumps(dict(results=earlier)))
    rows = oc.measure(tmp_path, ['vim_tiny'], ['infer'], 8, False, budget=0, json_path=report, append=True)
    assert [(r['model'], r['side']) for r in rows] == [('groupmamba_tiny', 'official'), ('groupmamba_tiny', 'ours'),
                                                      ('vim_tiny', 'official'), ('vim_tiny', 'ours')]
    assert all(r['status'] == 'skipped (time budget)' for r in rows[2:])   # vim_tiny's earlier rows are replaced
    assert json.loads(report.read_text())['results'] == rows
    assert len(oc.measure(tmp_path, ['vim_tiny'], ['infer'], 8, False, budget=0, json_path=report)) == 2


def test_a_failure_is_named_by_its_exception_or_its_signal(oc):
    warnings = "x.py:3: FutureWarning: `torch.cuda.amp.custom_fwd` is deprecated\n  @torch.cuda.amp.custom_fwd\n"
    trace = ('Traceback (most recent call last):\n  File "m.py", line 1, in <module>\n    import ext\n'
             "ModuleNotFoundError: No module named 'selective_scan_cuda_core'\n")
    # the exception line first, however many warnings came before it
    got = oc.failure(1, warnings * 20 + trace + warnings)
    assert got.splitlines()[0] == "ModuleNotFoundError: No module named 'selective_scan_cuda_core'"
    # a crash in an extension prints no traceback: the signal, and no warnings
    got = oc.failure(-11, warnings * 20 + 'Segmentation fault in kernel launch\n')
    assert got.splitlines()[0] == 'killed by SIGSEGV, no traceback' and 'Warning' not in got
    assert 'Segmentation fault in kernel launch' in got
    assert oc.failure(3, '').startswith('exit status 3')
    # the table shows the first line only: a row stays one line
    rows = [dict(side='ours', model='groupmamba_tiny', mode='infer', img_s=10.0, peak_gib=1.0),
            dict(side='official', model='groupmamba_tiny', mode='infer', status='error: ' + oc.failure(-11, 'a | b'))]
    md = oc.table(rows).splitlines()
    assert len(md) == 3 and 'error: killed by SIGSEGV, no traceback' in md[2]
