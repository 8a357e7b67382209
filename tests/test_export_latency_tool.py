"""benchmarks/export_latency.py on the CPU: onnxruntime against eager, every row in the JSON as it is measured."""
import importlib.util
import json
import os

import pytest

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location('export_latency', os.path.join(ROOT, 'benchmarks/export_latency.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_rows(tmp_path):
    out = tmp_path / 'latency.json'
    _tool().main(['--models', 'test_vmamba', '--img-size', '64', '--static', '--threads', '1', '--iters', '2',
                  '--warmup', '1', '--out', str(out)])
    result = json.loads(out.read_text())
    (row,) = result['rows']
    assert row['model'] == 'test_vmamba' and row['batch'] == 1 and row['img_size'] == 64
    assert row['onnx_dynamic'] is False
    assert all(row[k] > 0 for k in ('eager_ms', 'eager_export_scan_ms', 'onnxruntime_ms'))
    assert row['onnx_rel_err'] <= 1e-4
    assert result['meta']['threads'] == 1 and result['meta']['iters'] == 2
