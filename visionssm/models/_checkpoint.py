"""Loading official checkpoint files safely, and putting them into our models.

Official release files pickle non-tensor objects next to the weights (VMamba a yacs ``CfgNode``, Vim an argparse
``Namespace``), so ``torch.load(weights_only=True)`` refuses them, and ``weights_only=False`` would run whatever the
file's pickle asks for. We stay on PyTorch's restricted unpickler and let it accept those foreign classes only as
inert stand-ins: their code is never imported, nothing in the file can call anything, and the tensors come out
intact. The stand-ins are dropped; only state dicts are used.
"""
from __future__ import annotations

import collections
import importlib
import logging
import os
import pickle
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ['load_checkpoint_file', 'extract_state_dict', 'load_converted', 'load_through_model']

_logger = logging.getLogger(__name__)


def _stand_in(name: str) -> type:
    """An allow-listed stand-in for the foreign global ``name``. Whatever the pickle does with it (construct,
    call, fill items, set state) yields an empty-then-filled OrderedDict: the one container the restricted
    unpickler lets be filled and given state. Nothing of ``name`` is imported or run."""
    return type(name.rsplit('.', 1)[-1], (), {
        '__new__': staticmethod(lambda cls, *args, **kwargs: collections.OrderedDict()),
        '__module__': 'visionssm.inert',
    })


# numpy's data globals: arrays, dtypes and scalars are rebuilt from bytes, no code of the file's choosing runs.
# mmengine checkpoints keep numpy values in their meta, so these load as real numpy objects, not stand-ins.
_NUMPY_DATA = ('numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
               'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar', 'numpy.ndarray', 'numpy.dtype')


def _allowed(name: str):
    """The entry for ``safe_globals``: numpy's data classes as themselves, anything else as an inert stand-in."""
    if name in _NUMPY_DATA or name.startswith('numpy.dtypes.'):
        module, attr = name.rsplit('.', 1)
        try:
            return getattr(importlib.import_module(module.replace('numpy.core', 'numpy._core')), attr), name
        except (ImportError, AttributeError):
            pass
    return _stand_in(name), name


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """Load a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file without running pickled code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PyTorch checkpoint (says what was found).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as first_error:
        try:
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            raise ValueError(_not_a_checkpoint(path, first_error)) from first_error
        if not foreign:
            raise ValueError(_not_a_checkpoint(path, first_error)) from first_error
        _logger.info('checkpoint %s pickles non-tensor objects, kept inert: %s', path, ', '.join(foreign))
        try:
            allowed = [_allowed(g) for g in foreign]
            if any(g.startswith('numpy') for g in foreign):   # a dtype rebuilt by numpy.dtype is of its DType class
                import numpy.dtypes
                allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith('DType')]
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:  # e.g. a global of a module PyTorch blocks outright (os, subprocess)
            raise ValueError(f'{path} was refused: its pickle references {", ".join(foreign)}, which cannot be '
                             f'loaded safely even as inert objects') from e
    except Exception as e:  # truncated, text, or another format: torch.load fails in many ways
        raise ValueError(_not_a_checkpoint(path, e)) from e


def _not_a_checkpoint(path: str, error: Exception) -> str:
    with open(path, 'rb') as f:
        head = f.read(16)
    kind = ('a zip archive' if head.startswith(b'PK') else 'a pickle' if head[:1] == b'\x80'
            else 'text' if head.isascii() else 'binary data')
    return (f'{path} is not a PyTorch checkpoint this loader can read: it starts like {kind} '
            f'({head[:8]!r}); torch.load said: {str(error).splitlines()[0] if str(error) else type(error).__name__}')


def extract_state_dict(
        checkpoint: Any,
        containers: Sequence[str] = ('model', 'state_dict'),
        source: str = 'checkpoint',
        strip_prefixes: Sequence[str] = ('module.',),
) -> dict[str, torch.Tensor]:
    """The state dict inside an official container: the first of ``containers`` present, else the dict itself.

    Raises ValueError naming what was found when there are no tensors to load.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{source} holds a {type(checkpoint).__name__}, not a dict of tensors or a checkpoint dict')
    state = checkpoint
    for key in containers:
        if isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ', '.join(map(repr, list(checkpoint)[:8])) + (' ...' if len(checkpoint) > 8 else '')
        raise ValueError(f'{source} holds no state dict: expected tensors or one of the containers '
                         f'{list(containers)}, found a dict with keys {keys or "(none)"}')
    for prefix in strip_prefixes:  # DDP / EMA wrappers, possibly nested
        while tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def load_converted(
        model: nn.Module,
        state_dict: dict[str, torch.Tensor],
        filter_fn: Callable[[dict, nn.Module], dict],
        source: str = 'checkpoint',
        head_prefix: Optional[str] = 'head.fc.',
        first_conv: Optional[str] = None,
) -> None:
    """Convert ``state_dict`` with ``filter_fn`` and load it strictly into ``model``.

    A classifier of another size (``num_classes`` differs, or 0) is left at its initialization, and a first
    convolution for other input channels is adapted as timm does; every other mismatch is an error that names
    the keys.
    """
    from timm.models import adapt_input_conv

    state_dict = filter_fn(state_dict, model)
    own = model.state_dict()
    if first_conv and f'{first_conv}.weight' in state_dict and f'{first_conv}.weight' in own:
        key = f'{first_conv}.weight'
        if state_dict[key].shape[1] != own[key].shape[1]:
            state_dict[key] = adapt_input_conv(own[key].shape[1], state_dict[key])
    skipped = []
    if head_prefix:
        for key in [k for k in state_dict if k.startswith(head_prefix)]:
            if key not in own or own[key].shape != state_dict[key].shape:
                skipped.append(key)
                del state_dict[key]
    mismatched = [f'{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model'
                  for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict and not (skipped and k.startswith(head_prefix))]
    unexpected = [k for k in state_dict if k not in own]
    if mismatched or missing or unexpected:
        parts = []
        for what, keys in (('shape mismatches', mismatched), ('missing keys', missing), ('unexpected keys', unexpected)):
            if keys:
                parts.append(f'{len(keys)} {what}: ' + '; '.join(keys[:6]) + (' ...' if len(keys) > 6 else ''))
        raise ValueError(f'{source} does not fit {type(model).__name__}: ' + ' | '.join(parts))
    model.load_state_dict(state_dict, strict=not skipped)
    if skipped:
        _logger.info('classifier left at initialization (checkpoint head has another size): %s', skipped)


def load_through_model(kwargs: dict) -> dict:
    """Make every weight source of ``timm.create_model`` (the cfg url, or a ``file`` overlay, for which timm would
    reset ``custom_load``) go through the model's ``load_pretrained``: official files need the safe loader and the
    conversion. Returns ``kwargs`` with the overlay adjusted."""
    overlay = kwargs.get('pretrained_cfg_overlay')
    if overlay is not None:
        kwargs['pretrained_cfg_overlay'] = dict(overlay, custom_load=overlay.get('custom_load', True))
    return kwargs
