"""Model families: one public module per family; importing this package registers every variant with timm.

A family module defines its model, its timm variants, and ``from_official(checkpoint=None, **official_kwargs)``.
Adding a family is adding its file: it is discovered here.
"""
import importlib
import pkgutil

# The family modules (also their timm module names), in alphabetical order.
FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_')))
for _family in FAMILIES:
    importlib.import_module(f'{__name__}.{_family}')

from .vmamba import VMamba  # noqa: E402

# family name -> builder taking (checkpoint=None, **official constructor kwargs)
OFFICIAL_BUILDERS = {f: importlib.import_module(f'{__name__}.{f}').from_official for f in FAMILIES}


def from_official(family: str, checkpoint=None, **official_kwargs):
    """Build the visionssm model equal to the official class of ``family`` constructed with ``official_kwargs``
    (e.g. VMamba's ``VSSM(dims=..., depths=..., forward_type=...)``) and, if given, load an official checkpoint
    file into it through the same conversion as ``pretrained=True``."""
    if family not in OFFICIAL_BUILDERS:
        raise ValueError(f'unknown family {family!r}; known: {sorted(OFFICIAL_BUILDERS)}')
    return OFFICIAL_BUILDERS[family](checkpoint=checkpoint, **official_kwargs)
