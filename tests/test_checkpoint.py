"""Safe loading of official checkpoint files: tensors come out, pickled code never runs, bad files are named."""
import os

import pytest
import timm
import torch

from visionssm.models._checkpoint import extract_state_dict, load_checkpoint_file


class ConfigNode(dict):
    """Stands for the yacs CfgNode pickled in the official VMamba files (a dict subclass with attributes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen = True


class Payload:
    """An object whose unpickling would run a command: what a malicious checkpoint carries."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


def _official_like(tmp_path, extra):
    model = timm.create_model('test_vmamba')
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': model.state_dict(), 'epoch': 3, **extra}, path)
    return model, path


def test_foreign_objects_load_inert_and_tensors_intact(tmp_path):
    model, path = _official_like(tmp_path, {'config': ConfigNode(MODEL=ConfigNode(TYPE='vssm'), LR=1e-3)})
    with pytest.raises(Exception):  # PyTorch's own safe loader refuses the file
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint_file(path)
    assert ckpt['epoch'] == 3
    assert ckpt['config']['MODEL'] == {'TYPE': 'vssm'}  # kept as plain data, ConfigNode never constructed
    assert type(ckpt['config']) is not ConfigNode
    state = extract_state_dict(ckpt)
    assert state.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_pickled_calls_never_run(tmp_path):
    marker = tmp_path / 'pwned'
    _, path = _official_like(tmp_path, {'payload': Payload(marker)})
    with pytest.raises(ValueError, match=r'ckpt.pth was refused: its pickle references posix.system'):
        load_checkpoint_file(path)
    assert not marker.exists(), 'a pickled call was executed'


def test_pretrained_load_from_official_container(tmp_path):
    model, path = _official_like(tmp_path, {'config': ConfigNode(A=1)})
    clone = timm.create_model('test_vmamba', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in model.state_dict().items():
        assert torch.equal(clone.state_dict()[k], v)
    # Another classifier size keeps the backbone and leaves the head at its init.
    other = timm.create_model('test_vmamba', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(other.stem.conv1.weight, model.stem.conv1.weight)
    assert other.head.fc.weight.shape == (10, model.num_features)
    features = timm.create_model('test_vmamba', pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(features.model.stem.conv1.weight, model.stem.conv1.weight)


def test_safetensors_and_prefixed_state_dicts(tmp_path):
    from safetensors.torch import save_file
    model = timm.create_model('test_vmamba')
    st = tmp_path / 'w.safetensors'
    save_file(model.state_dict(), st)
    assert load_checkpoint_file(st).keys() == model.state_dict().keys()
    wrapped = {'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}
    assert extract_state_dict(wrapped).keys() == model.state_dict().keys()


def test_not_a_checkpoint_says_what_it_found(tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('these are not weights\n')
    with pytest.raises(ValueError, match=r'notes.pth is not a PyTorch checkpoint .* starts like text'):
        load_checkpoint_file(text)
    with pytest.raises(FileNotFoundError, match=r'checkpoint file not found: .*missing.pth'):
        load_checkpoint_file(tmp_path / 'missing.pth')
    with pytest.raises(ValueError, match=r"holds no state dict: .*found a dict with keys 'epoch', 'lr'"):
        extract_state_dict({'epoch': 1, 'lr': 0.1}, source='x.pth')
    with pytest.raises(ValueError, match=r'holds a list, not a dict of tensors'):
        extract_state_dict([torch.zeros(1)])


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'model': timm.create_model('test_vmamba', dims=8).state_dict()}, path)
    with pytest.raises(ValueError, match=r'does not fit VMamba: \d+ shape mismatches: stem.conv1.weight'):
        timm.create_model('test_vmamba', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_numpy_values_in_meta_load_as_numpy(tmp_path):
    # mmengine checkpoints keep numpy scalars and arrays in their meta: they load as themselves, safely
    np = pytest.importorskip('numpy')
    path = tmp_path / 'mm.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(3), 'hist': np.arange(4.0),
                                                             'kind': np.dtype('float32')}}, path)
    ckpt = load_checkpoint_file(path)
    assert ckpt['meta']['seed'] == 3 and isinstance(ckpt['meta']['seed'], np.integer)
    assert np.array_equal(ckpt['meta']['hist'], np.arange(4.0))
    assert ckpt['meta']['kind'] == np.dtype('float32')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
