"""Compile the chunked scan kernels for sm_90 on a machine without a GPU and count their SASS per element.

    python3 benchmarks/sass_count.py [fwd|bwd ...]      # default both, at several (BT, BD, warps) tile shapes

Uses triton's bundled ptxas / cuobjdump: prints registers, stack (spill) bytes, static instructions per element of
the [BT, BD] tile (the chunked kernels have no loops besides the flag spin, so static ~ dynamic), and the counts of
shuffles, local loads / stores and MUFU (exp / log) instructions. N = 1, bf16 maps, every option on.
"""
import collections
import os
import re
import subprocess
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import triton_scan as TS  # noqa: E402

POINTERS = dict(u_ptr='*bf16', delta_ptr='*bf16', A_ptr='*fp32', B_ptr='*bf16', C_ptr='*bf16', D_ptr='*fp32',
                bias_ptr='*fp32', out_ptr='*bf16', state_ptr='*fp32', sync_ptr='*i32', pos_ptr='*i32',
                meta_ptr='*i32', dout_ptr='*bf16', ckpt_ptr='*fp32', carry_ptr='*fp32', du_ptr='*bf16',
                ddelta_ptr='*bf16', dB_ptr='*fp32', dC_ptr='*fp32', dA_ptr='*fp32', dD_ptr='*fp32', dbias_ptr='*fp32')
ALIGNED = {'W', 'su_b', 'su_p', 'sd_b', 'sd_p', 'so_b', 'so_p', 'sB_b', 'sC_b', 'sdu_b', 'sdu_p'}
TOOL = os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/cuobjdump')


def count(which, bt, bd, warps, workdir='/tmp'):
    fn = TS._scan_fwd_chunked_kernel if which == 'fwd' else TS._scan_bwd_chunked_kernel
    consts = dict(BT=bt, BD=bd, BN=1, VEC=8, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, HIDDEN=False)
    consts.update(ATOMIC=False) if which == 'fwd' else consts.update(DU_ATOMIC=False)
    sig = {a: 'constexpr' if a in consts else POINTERS.get(a, 'fp32' if a == 'scale' else 'i32') for a in fn.arg_names}
    attrs = {(i,): [['tt.divisibility', 16]] for i, a in enumerate(fn.arg_names)
             if sig[a].startswith('*') or a in ALIGNED}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                            target=GPUTarget('cuda', 90, 32), options=dict(num_warps=warps))
    cubin = os.path.join(workdir, f'scan_{which}_{bt}_{bd}_{warps}.cubin')
    with open(cubin, 'wb') as f:
        f.write(kernel.asm['cubin'])
    sass = subprocess.run([TOOL, '-sass', cubin], capture_output=True, text=True).stdout
    usage = subprocess.run([TOOL, '--dump-resource-usage', cubin], capture_output=True, text=True).stdout
    lines = [ln for ln in sass.split('\n') if re.match(r'^\s+/\*[0-9a-f]{4,}\*/', ln)]
    ops = collections.Counter(re.sub(r'^@!?U?P[0-9T]+\s+', '', ln.split('*/')[1].strip()).split(' ')[0].split('.')[0]
                              for ln in lines)
    regs, stack = re.search(r'REG:(\d+)', usage).group(1), re.search(r'STACK:(\d+)', usage).group(1)
    per = len(lines) * 32 * warps / (bt * bd)
    print(f'{which} BT={bt} BD={bd} warps={warps}: regs {regs} stack {stack} B, {per:.1f} instructions/element, '
          f'SHFL {ops["SHFL"]} STL {ops["STL"]} LDL {ops["LDL"]} MUFU {ops["MUFU"]}', flush=True)


if __name__ == '__main__':
    for which in sys.argv[1:] or ['fwd', 'bwd']:
        for bt, bd, warps in [(32, 32, 1), (16, 32, 1), (32, 16, 1), (32, 64, 2)]:
            count(which, bt, bd, warps)
