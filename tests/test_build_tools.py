"""tools/cxx_for_extensions.sh: the compiler that tools/build_mmcv.sh builds torch extensions with.

A compiler that links libstdc++ statically into shared objects (some CUDA images set CXX to one) builds an mmcv
whose first iostream use crashes beside torch's libstdc++; the script detects it and falls back to the system g++.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'tools' / 'cxx_for_extensions.sh'

pytestmark = pytest.mark.skipif(not (shutil.which('c++') and os.access('/usr/bin/g++', os.X_OK)),
                                reason='needs c++ and /usr/bin/g++')


def _pick(tmp_path, cxx, cc='cc'):
    env = dict(os.environ, CXX=str(cxx), CC=str(cc))
    return subprocess.run(['bash', str(SCRIPT)], env=env, capture_output=True, text=True, cwd=tmp_path)


def _wrapper(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\n{body}\n')
    path.chmod(0o755)
    return path


def test_a_compiler_linking_libstdcxx_dynamically_is_kept(tmp_path):
    plain = _wrapper(tmp_path, 'plain-g++', 'exec /usr/bin/g++ "$@"')
    r = _pick(tmp_path, plain, 'my-cc')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(plain), 'my-cc'] and r.stderr == ''


def test_a_static_libstdcxx_compiler_is_replaced_by_the_system_one(tmp_path):
    static = _wrapper(tmp_path, 'static-g++', 'exec /usr/bin/g++ -static-libstdc++ "$@"')
    r = _pick(tmp_path, static, 'my-cc')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['/usr/bin/g++', '/usr/bin/gcc' if os.access('/usr/bin/gcc', os.X_OK) else '/usr/bin/cc']
    assert 'links libstdc++ statically' in r.stderr and str(static) in r.stderr


def test_a_compiler_that_cannot_link_is_named(tmp_path):
    broken = _wrapper(tmp_path, 'broken-g++', 'exit 1')
    r = _pick(tmp_path, broken)
    assert r.returncode == 0 and r.stdout.split()[0] == '/usr/bin/g++'
    assert 'cannot build a C++ shared object' in r.stderr and str(broken) in r.stderr
