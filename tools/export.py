"""Export a visionssm model: ONNX, a ``torch.export`` program (.pt2) or an AOTInductor package (.pt2).

    python tools/export.py vmamba_tiny_s1l8 --format onnx --dynamic --out vmamba_tiny.onnx
    python tools/export.py efficientvmamba_tiny --format aoti --checkpoint ckpt.pth --img-size 224
    python tools/export.py groupmamba_tiny --features-only --format torch-export --dynamic
    python tools/export.py vmamba_tiny_s1l8 --format aoti --device cuda --scan triton --batch 1 --img-size 224

The API behind it is ``visionssm.export``; see docs/deploy.md for what exports and how it was verified.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import timm  # noqa: E402
import torch  # noqa: E402

import visionssm  # noqa: E402,F401  (registers the models with timm)
from visionssm.export import FORMATS, example_input, export_aoti, export_onnx, export_program  # noqa: E402

SUFFIX = {'onnx': '.onnx', 'torch-export': '.pt2', 'aoti': '.aoti.pt2'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('model', help='registered model name, e.g. vmamba_tiny_s1l8')
    p.add_argument('--format', choices=FORMATS, default='onnx')
    p.add_argument('--dynamic', action='store_true', help='dynamic batch, height and width (multiples of the stride)')
    p.add_argument('--checkpoint', default='', help='weights to load (official or visionssm layout)')
    p.add_argument('--features-only', action='store_true', help='export the backbone returning its stage maps')
    p.add_argument('--img-size', type=int, default=None,
                   help="traced size (a static export's only size); default the model's")
    p.add_argument('--batch', type=int, default=2, help='example batch (static exports keep it)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--scan', choices=('export', 'triton'), default='export',
                   help="torch-export / aoti: the scan's loop-free form (default), or visionssm's Triton kernels "
                        "(CUDA, static sizes; the loading process must import visionssm)")
    p.add_argument('--out', default='', help='output path; default <model><suffix> in the working directory')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    kwargs = dict(features_only=True) if args.features_only else {}
    if args.checkpoint:
        kwargs['checkpoint_path'] = args.checkpoint
    model = timm.create_model(args.model, **kwargs).eval().to(args.device)
    x = example_input(model, args.img_size, args.batch)
    out = args.out or args.model + ('_features' if args.features_only else '') + SUFFIX[args.format]
    start = time.perf_counter()
    if args.format == 'onnx':
        if args.scan != 'export':
            raise SystemExit('--scan triton: ONNX runtimes cannot call visionssm\'s kernels; export ONNX with the '
                             'default --scan export')
        export_onnx(model, out, x, dynamic=args.dynamic)
    elif args.format == 'torch-export':
        export_program(model, x, dynamic=args.dynamic, path=out, scan=args.scan)
    else:
        export_aoti(model, out, x, dynamic=args.dynamic, scan=args.scan)
    shape = 'dynamic batch/height/width' if args.dynamic else f'static {tuple(x.shape)}'
    print(f'[export] {args.model} -> {out} ({args.format}, {shape}) in {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
    main()
