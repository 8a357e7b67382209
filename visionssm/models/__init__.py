"""Model families; importing this package registers every variant with timm."""
from . import vmamba
from .vmamba import VMamba

# The model families (modules of visionssm.models, also their timm module names).
FAMILIES = ('vmamba',)

# family name -> builder taking (checkpoint=None, **official constructor kwargs)
OFFICIAL_BUILDERS = {
    'vmamba': vmamba.from_official,
}


def from_official(family: str, checkpoint=None, **official_kwargs):
    """Build the visionssm model equal to the official class of ``family`` constructed with ``official_kwargs``
    (e.g. VMamba's ``VSSM(dims=..., depths=..., forward_type=...)``) and, if given, load an official checkpoint
    file into it through the same conversion as ``pretrained=True``."""
    if family not in OFFICIAL_BUILDERS:
        raise ValueError(f'unknown family {family!r}; known: {sorted(OFFICIAL_BUILDERS)}')
    return OFFICIAL_BUILDERS[family](checkpoint=checkpoint, **official_kwargs)
