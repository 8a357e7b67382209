"""The benchmark tool on the CPU (tiny models, tiny sizes): rows, JSON, markdown, plots, merge, and the failures a
long GPU run must survive (unknown model, out of memory, a CUDA error, the time budget)."""
import dataclasses
import json
import pathlib
import re

import pytest
import torch

from visionssm import benchmark as bm

PROTOCOL = bm.Protocol(device='cpu', warmup=1, repeats=2, repeat_s=0.0, pool=2)
FAST = ['--device', 'cpu', '--warmup', '1', '--repeats', '1', '--no-progress']
ROW_FIELDS = {'model', 'family', 'visionssm', 'mode', 'precision', 'img_size', 'batch_size', 'batch_size_requested',
              'channels_last', 'compile', 'params_m', 'gflops', 'gflops_224', 'img_per_s', 'img_per_s_min',
              'img_per_s_max', 'ms', 'ms_min', 'ms_max', 'warmup', 'repeats', 'iters_per_repeat', 'first_iter_s',
              'peak_mem_gib', 'peak_mem_kind', 'timing', 'wall_s', 'status', 'run'}
PNG = b'\x89PNG'


def test_run_writes_json_table_and_plots(tmp_path):
    # a visionssm model, a tiny timm ViT (rebuilt for each size: its constructor fixes the input size) and a name
    # that does not exist, which must become error rows rather than end the run
    rows = bm.main(['--models', 'test_vmamba', 'test_vit', 'not_a_model', '--no-baselines', '--in-process', *FAST,
                    '--resolutions', '64,96', '--batch-sizes', '2,1',
                    '--measure', 'infer:fp32@64,96', 'latency,train:fp32@64',
                    '--json', str(tmp_path / 'run.json'), '--out-dir', str(tmp_path / 'out')])
    data = json.loads((tmp_path / 'run.json').read_text())
    assert data == json.loads((tmp_path / 'out' / 'benchmark.json').read_text())
    assert [r['status'] for r in data['results']] == [r['status'] for r in rows]
    env = data['runs'][0]['environment']
    assert {'gpu', 'driver', 'cuda'}.isdisjoint(env)  # a CPU run records no GPU
    for key in ('torch', 'triton', 'timm', 'python', 'visionssm', 'command', 'started', 'finished'):
        assert key in env
    assert '--measure infer:fp32@64,96' in env['command']
    assert data['runs'][0]['protocol']['warmup'] == 1

    by = {(r['model'], r['mode'], r['img_size']): r for r in data['results']}
    assert len(data['results']) == 3 * 4
    for model in ('test_vmamba', 'test_vit'):
        for key in [(model, 'infer', 64), (model, 'infer', 96), (model, 'latency', 64), (model, 'train', 64)]:
            row = by[key]
            assert row['status'] == 'ok', row
            assert ROW_FIELDS <= row.keys(), ROW_FIELDS - row.keys()
            assert row['img_per_s'] > 0 and row['ms_min'] <= row['ms'] <= row['ms_max']
            assert row['img_per_s'] == pytest.approx(row['batch_size'] * 1e3 / row['ms'])
        assert by[(model, 'infer', 96)]['batch_size'] == 1 and by[(model, 'latency', 64)]['batch_size'] == 1
        assert by[(model, 'infer', 96)]['gflops'] > by[(model, 'infer', 64)]['gflops'] > 0
        assert by[(model, 'train', 64)]['optimizer'].startswith('AdamW')
        assert 'optimizer' not in by[(model, 'infer', 64)]
    assert by[('test_vmamba', 'infer', 64)]['family'] == 'vmamba' and by[('test_vmamba', 'infer', 64)]['visionssm']
    assert not by[('test_vit', 'infer', 64)]['visionssm']
    assert all(r['status'].startswith('error: RuntimeError: Unknown model') for r in data['results']
               if r['model'] == 'not_a_model')

    md = (tmp_path / 'out' / 'benchmark.md').read_text()
    table = md.split('## All measurements')[1]
    assert sum(line.startswith('| test_v') for line in table.splitlines()) == 8
    assert table.count('Unknown model (not_a_model)') == 4
    for name in ('throughput_vs_params.png', 'scaling.png'):
        assert (tmp_path / 'out' / name).read_bytes().startswith(PNG)


def test_quick_in_worker_process():
    # `make demo`: every model in a fresh spawned process, batch 2 at 64 px, GFLOPs at 224
    (row,) = bm.main(['--quick', '--models', 'test_vmamba', *FAST])
    assert row['status'] == 'ok' and (row['img_size'], row['batch_size'], row['precision']) == (64, 2, 'fp32')
    assert row['gflops_224'] == pytest.approx(bm.count_gflops('test_vmamba'))
    assert row['peak_mem_kind'] == 'peak RSS of the measuring process' and row['peak_mem_gib'] > 0


CARDS = pathlib.Path(__file__).resolve().parent.parent / 'model_cards'


def _first_variant(card: pathlib.Path) -> tuple:
    """(timm name, GFLOPs) of the first row of the card's variants table (its first table with both columns)."""
    lines = card.read_text().splitlines()
    for i, line in enumerate(lines):
        head = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('|') and 'timm name' in head and 'GFLOPs' in head:
            cells = [c.strip() for c in lines[i + 2].strip().strip('|').split('|')]
            return cells[0].strip('`'), float(re.match(r'[\d.]+', cells[head.index('GFLOPs')]).group())
    raise AssertionError(f'{card.name}: no table with "timm name" and "GFLOPs" columns')


@pytest.mark.parametrize('card', sorted(CARDS.glob('*.md')), ids=lambda p: p.stem)
def test_model_card_gflops_are_the_architectures(card):
    """The count is the architecture's, as the papers count it, not what an implementation multiplies: fused
    weights' zeros (Vim's block-diagonal projections) and weights composed once per call for inference (SS2D's Δ
    projection) are left out. The first variant of every card, to the card's two decimals."""
    name, gflops = _first_variant(card)
    assert round(bm.count_gflops(name), 2) == gflops, name


def test_time_budget_stops_a_running_measurement():
    settings = [bm.Setting('infer', 'fp32', 64, 2), bm.Setting('train', 'fp32', 64, 2)]
    # the worker process cannot even import torch within the budget: it is killed, the next setting skipped
    data = bm.run(['test_vmamba'], settings, PROTOCOL, gflops_sizes=[], time_budget=0.3, progress=False)
    assert [r['status'] for r in data['results']] == ['timeout (time budget): measurement stopped',
                                                       'skipped (time budget)']


def test_out_of_memory_halves_the_batch(monkeypatch):
    make = bm._random_batches

    def limited(pool, batch_size, *args, **kwargs):
        if batch_size > limit:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return make(pool, batch_size, *args, **kwargs)

    monkeypatch.setattr(bm, '_random_batches', limited)
    setting = bm.Setting('infer', 'fp32', 64, 8)
    limit = 2
    row = bm.measure('test_vmamba', setting, PROTOCOL)
    assert row['status'] == 'ok' and row['batch_size'] == 2 and row['batch_size_requested'] == 8
    assert row['oom_batch_sizes'] == [8, 4] and row['img_per_s'] > 0
    limit = 0
    row = bm.measure('test_vmamba', setting, PROTOCOL)
    assert row['status'] == 'oom' and row['oom_batch_sizes'] == [8, 4, 2, 1] and 'img_per_s' not in row
    assert '(OOM at 8, 4)' in bm.format_table([dict(row, status='ok', batch_size=2, oom_batch_sizes=[8, 4],
                                                    img_per_s=1., img_per_s_min=1., img_per_s_max=1., ms=2.,
                                                    ms_min=2., ms_max=2.)])
    bm._release_model()


def test_cuda_error_marks_the_worker_for_replacement(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('CUDA error: an illegal memory access was encountered')

    monkeypatch.setattr(bm, '_benchmark', broken)
    row = bm.measure('test_vmamba', bm.Setting('infer', 'fp32', 64, 2), PROTOCOL)
    assert row['status'] == 'error: RuntimeError: CUDA error: an illegal memory access was encountered'
    assert row['fatal']
    bm._release_model()


def test_merge_joins_parts_into_one_table_and_plots(tmp_path):
    parts = []
    for i, size in enumerate((64, 96)):
        data = bm.run(['test_vmamba'], [bm.Setting('infer', 'fp32', size, 1)], PROTOCOL, gflops_sizes=[],
                      isolate=False, json_path=str(tmp_path / f'part{i}.json'), progress=False)
        assert data['results'][0]['status'] == 'ok'
        parts.append(str(tmp_path / f'part{i}.json'))
    rows = bm.main(['--merge', *parts, '--out-dir', str(tmp_path / 'out')])
    merged = json.loads((tmp_path / 'out' / 'benchmark.json').read_text())
    assert len(merged['runs']) == 2 and [r['run'] for r in merged['results']] == [0, 1]
    assert [r['img_size'] for r in rows] == [64, 96]
    md = (tmp_path / 'out' / 'benchmark.md').read_text()
    assert '- run 0:' in md and '- run 1:' in md
    assert (tmp_path / 'out' / 'scaling.png').read_bytes().startswith(PNG)  # two sizes, one from each part


@pytest.mark.parametrize('argv, message', [
    (['--measure', 'infer:fp16@224'], "unknown 'fp16'"),
    (['--measure', 'sprint@224'], "unknown 'sprint'"),
    (['--resolutions', '64,96,128', '--batch-sizes', '2,1'], 'got 2 batch sizes for 3 resolutions'),
    (['--resolutions', '64', '--batch-sizes', '2,1'], 'got 2 batch sizes for 1 resolutions'),
    (['--measure', 'infer@512', '--resolutions', '64,96', '--batch-sizes', '2,1'], 'no batch size for size(s) [512]'),
    (['--resolutions', '0'], 'expected positive integers'),
    (['--merge', 'a.json'], '--merge needs --out-dir'),
    (['--cuda-graph', '--compile'], 'cuda_graph replays the eager model; not with compile'),
    (['--models', 'no_such_family_*'], "pattern 'no_such_family_*' matches no timm model"),
])
def test_bad_arguments_get_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        bm.main(['--device', 'cpu', *argv])
    assert message in capsys.readouterr().err


def test_compile_mode():
    assert bm.Protocol(compile=True, compile_mode='reduce-overhead').compile_mode == 'reduce-overhead'
    with pytest.raises(ValueError, match='compile_mode must be one of'):
        bm.Protocol(compile=True, compile_mode='fast')
    row = dict(channels_last=True, compile=True, compile_mode='reduce-overhead')
    assert bm._options(row) == 'channels_last, compile (reduce-overhead)'
    assert bm._options(dict(channels_last=False, compile=False, cuda_graph=True)) == 'CUDA graphs'
    assert bm._options(dict(compile=True)) == 'compile'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_graph_training_rows():
    """--cuda-graph: training rows replay the graphs (named in the row, the graphs' pool counted in the memory),
    inference rows stay eager."""
    protocol = bm.Protocol(device='cuda', warmup=2, repeats=2, repeat_s=0.0, pool=2, cuda_graph=True)
    train = bm.measure('test_vmamba', bm.Setting('train', 'bf16', 64, 4), protocol)
    infer = bm.measure('test_vmamba', bm.Setting('infer', 'bf16', 64, 4), protocol)
    bm._release_model()
    assert train['status'] == infer['status'] == 'ok'
    assert train['cuda_graph'] and 'cuda_graph' not in infer
    assert 'private pool' in train['peak_mem_kind']


def test_merge_rejects_other_json(tmp_path):
    (tmp_path / 'x.json').write_text('{"a": 1}')
    with pytest.raises(ValueError, match='x.json is not a benchmark JSON file'):
        bm.merge([str(tmp_path / 'x.json')])


def test_summary_params_come_from_the_224_row():
    """A model whose parameter count grows with the input (Vim's position embedding) shows its 224 count."""
    from visionssm.benchmark import format_summary
    base = dict(model='vim_tiny', precision='bf16', mode='infer', batch_size=8, status='ok', img_per_s=1.0, ms=1.0,
                gflops_224=1.8)
    rows = [dict(base, img_size=224, params_m=7.15), dict(base, img_size=1024, params_m=7.90)]
    assert '| vim_tiny | 7.15 |' in format_summary(rows)
    assert '| vim_tiny | 7.15 |' in format_summary(rows[::-1])


def test_train_mode_with_the_recipes_fused_adamw(monkeypatch):
    """--fused-adamw: the train step's AdamW as the classification recipes build it (fused=True), named in the row."""
    built = []
    adamw = torch.optim.AdamW

    def recording(params, **kwargs):
        built.append(kwargs)
        return adamw(params, **kwargs)
    monkeypatch.setattr(torch.optim, 'AdamW', recording)
    setting = bm.Setting('train', 'fp32', 64, 2)
    plain = bm.measure('test_vmamba', setting, PROTOCOL)
    fused = bm.measure('test_vmamba', setting, dataclasses.replace(PROTOCOL, fused_adamw=True))
    assert plain['status'] == fused['status'] == 'ok'
    assert plain['optimizer'] == 'AdamW (torch default implementation)' and fused['optimizer'] == 'AdamW (fused)'
    assert [k.get('fused') for k in built] == [None, True]
    bm._release_model()
