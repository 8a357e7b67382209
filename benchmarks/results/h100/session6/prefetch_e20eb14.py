"""The prefetch measurement of session 6 (run from the repository root on the H100; output prefetch_e20eb14.log)."""
import os, sys, time
sys.path.insert(0, '.')
import torch
import kernels.bench as KB
from kernels import triton_scan as TS
from kernels import routes as R
sys.path.insert(0, 'benchmarks')
import tune_sequential as T
T.TS = TS
import triton
print(f'GPU {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}', flush=True)
t0 = time.time()
for pf in (True, False):
    TS.SEQ_PREFETCH = pf
    T.check(R.plan_routes(R.cross_routes(), 14, 14, 96, 96, 96), 2, 1, False)
    T.check(R.plan_routes(R.bidirectional_routes(192), 1, 197, 192, 384, 192), 2, 16, True)
print(f'checks {time.time()-t0:.0f}s', flush=True)
todo, batch = KB.cases(128)
EXTRA = {'s1': [((32, 8, 1), (32, 8, 1)), ((32, 16, 1), (32, 4, 1))], 's2': [((64, 8, 1), (64, 4, 1)), ((64, 16, 1), (32, 4, 1))],
         's3': [((64, 16, 1), (64, 8, 1))], 's4': [], 'Vim': [((32, 4, 4), (16, 4, 2))]}
for name, plan, n, mean in todo:
    x = KB.make_inputs(plan, batch, n)
    for pf in (True, False):
        TS.SEQ_PREFETCH = pf
        for train in (False, True):
            t = KB.bench_one(TS.selective_scan_triton, x, plan, mean, train, graph=True)
            print(f'{name:34s} default prefetch={pf!s:5s} {"fwd+bwd" if train else "fwd":7s} {t:7.3f} ms', flush=True)
    TS.SEQ_PREFETCH = True
    key = next(k for k in EXTRA if k in name)
    for seq in EXTRA[key]:
        TS._SEQ_OVERRIDE = seq
        for train in (False, True):
            t = KB.bench_one(TS.selective_scan_triton, x, plan, mean, train, graph=True)
            print(f'{name:34s} {seq} prefetch=True {"fwd+bwd" if train else "fwd":7s} {t:7.3f} ms', flush=True)
        TS._SEQ_OVERRIDE = None
    del x; torch.cuda.empty_cache()
print(f'total {time.time()-t0:.0f}s', flush=True)
