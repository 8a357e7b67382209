"""benchmarks/export_latency.py on the CPU: onnxruntime against eager, every row in the JSON as it is measured."""
import json

import pytest

from _scripts import load_benchmark

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')


def test_cpu_rows(tmp_path):
    out = tmp_path / 'latency.json'
    load_benchmark('export_latency').main(['--models', 'test_vmamba', '--img-size', '64', '--static', '--threads', '1',
                                           '--iters', '2', '--warmup', '1', '--out', str(out)])
    result = json.loads(out.read_text())
    (row,) = result['rows']
    assert row['model'] == 'test_vmamba' and row['batch'] == 1 and row['img_size'] == 64
    assert row['onnx_dynamic'] is False
    assert all(row[k] > 0 for k in ('eager_ms', 'eager_export_scan_ms', 'onnxruntime_ms'))
    assert row['onnx_rel_err'] <= 1e-4
    assert result['meta']['threads'] == 1 and result['meta']['iters'] == 2
