"""Export visionssm models for deployment: ONNX, ``torch.export`` programs (``.pt2``) and AOTInductor packages.

While exporting, the scan op runs its loop-free form (``visionssm/kernels/export_scan.py``, backend ``'export'``):
plain indexing, cumulative sums, exponentials and products that every exporter can trace, with the routes'
positions computed in the graph, so batch, height and width can stay dynamic. A program or AOTInductor package
for CUDA can instead keep visionssm's Triton scan as one opaque op (``scan='triton'``, static sizes).

    from visionssm.export import export_onnx
    model = timm.create_model('vmamba_tiny_s1l8', pretrained=True).eval()
    export_onnx(model, 'vmamba_tiny.onnx', img_size=224, dynamic=True)

Dynamic height and width are multiples of the model's total stride (``input_multiple``, 32 for the hierarchical
families, the patch size for Vim) from 2 strides up to ``max_size``. The ONNX file comes from the dynamo-based
exporter (``torch.onnx.export(dynamo=True)``, torch's default since 2.9): it starts from the same
``torch.export`` graph, so the symbolic sizes carry through; the TorchScript-based exporter traces with Python
ints and would bake the route positions in as constants for one size.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.export import Dim

from visionssm.ops.selective_scan import exported_scan

__all__ = ['input_multiple', 'example_input', 'dynamic_shapes', 'export_program', 'export_onnx', 'export_aoti',
           'FORMATS']

FORMATS = ('onnx', 'torch-export', 'aoti')
PathLike = Union[str, os.PathLike]


def input_multiple(model: nn.Module) -> int:
    """The total stride of ``model``: input height and width must be multiples of it."""
    info = getattr(model, 'feature_info', None)
    if hasattr(info, 'reduction'):       # timm's FeatureInfo (features_only models)
        return max(info.reduction())
    if info:                             # a model's list of per-stage dicts
        return max(int(f['reduction']) for f in info)
    raise ValueError(f'{type(model).__name__} has no feature_info to read its stride from; pass the sizes yourself')


def example_input(model: nn.Module, img_size: Optional[Union[int, Sequence[int]]] = None, batch: int = 2
                  ) -> torch.Tensor:
    """A random ``(batch, C, H, W)`` input at ``img_size`` (default: the model's pretrained config).

    Tracing sees this input's sizes: a batch of 1 (or a dimension of size 1) would be fixed to 1 in the graph,
    so the default batch is 2.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    chans, *size = cfg.get('input_size', (3, 224, 224))
    if img_size is not None:
        size = [img_size, img_size] if isinstance(img_size, int) else list(img_size)
    multiple = input_multiple(model)
    if any(s % multiple for s in size):
        raise ValueError(f'img_size {tuple(size)} must be a multiple of {multiple}, '
                         f'the stride of {type(model).__name__}')
    param = next(model.parameters())
    return torch.randn(batch, chans, *size, device=param.device, dtype=param.dtype)


def dynamic_shapes(model: nn.Module, max_size: int = 2048, max_batch: int = 1024) -> tuple[dict, ...]:
    """``torch.export`` dynamic shapes for ``model(x)``: dynamic batch, height and width (multiples of the stride),
    from two strides, or from the model's ``min_export_size`` where its graph needs more."""
    multiple = input_multiple(model)
    low = max(2, -(-getattr(model, 'min_export_size', 0) // multiple))
    steps = max(low, max_size // multiple)
    return ({0: Dim('batch', min=1, max=max_batch),
             2: multiple * Dim('height_steps', min=low, max=steps),
             3: multiple * Dim('width_steps', min=low, max=steps)},)


def export_program(model: nn.Module, x: Optional[torch.Tensor] = None, dynamic: bool = True,
                   path: Optional[PathLike] = None, scan: str = 'export') -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (in eval mode) for inputs like ``x``; saved to ``path`` (``.pt2``) if given.

    ``scan`` is what the program runs for the scan: ``'export'``, its loop-free form in plain ops (any exporter or
    runtime, dynamic sizes), or ``'triton'``, visionssm's Triton kernels behind the op ``visionssm::selective_scan``
    (CUDA only, static sizes, and the loading process must ``import visionssm``).
    """
    model = model.eval()
    x = example_input(model) if x is None else x
    if scan == 'triton' and dynamic:
        raise ValueError("scan='triton' exports for the example's size only (the op plans its routes per map size): "
                         "pass dynamic=False, or use scan='export' for dynamic sizes")
    with torch.no_grad(), exported_scan(scan):
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(model) if dynamic else None)
    if path is not None:
        torch.export.save(program, os.fspath(path))
    return program


def export_onnx(model: nn.Module, path: PathLike, x: Optional[torch.Tensor] = None, dynamic: bool = True,
                opset: Optional[int] = None, optimize: bool = False, check: bool = True) -> str:
    """Write ``model`` as ONNX to ``path`` (input ``'input'``, outputs ``'output'`` or ``'feature_<i>'``).

    ``optimize`` runs onnxscript's graph optimizer (constant folding, fusions); it is off by default because it
    takes minutes on the larger models and onnxruntime applies its own optimizations when it loads the file.
    ``check`` runs ``onnx.checker`` on the written file.
    """
    model = model.eval()
    x = example_input(model) if x is None else x
    with torch.no_grad():
        outputs = model(x)
    names = ['output'] if isinstance(outputs, torch.Tensor) else [f'feature_{i}' for i in range(len(outputs))]
    with torch.no_grad():
        torch.onnx.export(model, (x,), os.fspath(path), dynamo=True, input_names=['input'], output_names=names,
                          dynamic_shapes=dynamic_shapes(model) if dynamic else None, opset_version=opset,
                          optimize=optimize, external_data=False, verbose=False)
    if check:
        import onnx
        onnx.checker.check_model(os.fspath(path))
    return os.fspath(path)


def export_aoti(model: nn.Module, path: PathLike, x: Optional[torch.Tensor] = None, dynamic: bool = True,
                scan: str = 'export') -> str:
    """Compile ``model`` ahead of time with AOTInductor into a package (``.pt2``) for ``x``'s device.

    Load it with ``torch._inductor.aoti_load_package(path)``. With ``scan='export'`` it runs without Python model
    code: on a CPU the package holds C++ kernels, on CUDA Triton kernels that Inductor generated for the export form
    of the scan. With ``scan='triton'`` (CUDA, static sizes) the package calls visionssm's own scan kernels through
    the op ``visionssm::selective_scan``: ``import visionssm`` before loading it (see ``export_program``).
    """
    program = export_program(model, x, dynamic, scan=scan)
    return torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(path))
