"""GroupedOptimWrapperConstructor: the per-parameter options of mmengine's constructor, one group per distinct set."""
import pytest

pytest.importorskip('mmengine')

import copy  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402

from visionssm.mm.optim import GroupedOptimWrapperConstructor  # noqa: E402

CFG = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
PARAMWISE = dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={'head': dict(lr_mult=0.1)})


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4 * 6 * 6),
                         nn.Sequential(nn.Linear(144, 5)), nn.Linear(5, 2))


class _Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = _model(), nn.Linear(2, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_groups_are_merged_by_their_options_and_train_identically():
    model = _Named()
    reference = copy.deepcopy(model)
    grouped = GroupedOptimWrapperConstructor(copy.deepcopy(CFG), copy.deepcopy(PARAMWISE))(model)
    single = DefaultOptimWrapperConstructor(copy.deepcopy(CFG), copy.deepcopy(PARAMWISE))(reference)
    groups = grouped.optimizer.param_groups
    assert len(single.optimizer.param_groups) == len(list(model.parameters())) == 12
    # decayed / not decayed in the body (3 weights; 7 biases and norm affines); the head's weight and bias at a
    # tenth of the learning rate (a custom key takes precedence over bias_decay_mult, as in mmengine)
    assert sorted((round(g['lr'], 9), g['weight_decay'], len(g['params'])) for g in groups) == [
        (1e-4, 0.05, 2), (1e-3, 0.0, 7), (1e-3, 0.05, 3)]
    x = torch.randn(4, 3, 8, 8)
    for _ in range(3):
        for m, wrapper in ((model, grouped), (reference, single)):
            wrapper.update_params(m(x).square().mean())
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_without_paramwise_cfg_it_is_the_default():
    wrapper = GroupedOptimWrapperConstructor(copy.deepcopy(CFG))(_Named())
    assert len(wrapper.optimizer.param_groups) == 1


def test_the_configs_use_it():
    from pathlib import Path
    from mmengine.config import Config
    root = Path(__file__).resolve().parents[1] / 'configs'
    for name in ('classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py', 'classification/vim/vim-t_8xb128_in1k.py',
                 'detection/mask-rcnn_vmamba-t_fpn_1x_coco.py', 'detection/retinanet_vmamba-t_fpn_1x_coco.py',
                 'detection/plainmamba/mask-rcnn_plainmamba-adapter-l1_fpn_1x_coco.py',
                 'detection/mambavision/cascade-mask-rcnn_mambavision-t_fpn_ms-3x_coco.py',
                 'segmentation/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py'):
        cfg = Config.fromfile(str(root / name))
        assert cfg.optim_wrapper.constructor == 'visionssm.GroupedOptimWrapperConstructor', name


@pytest.mark.parametrize('update_buffers', [False, True])
def test_foreach_ema_equals_mmengine_ema(update_buffers):
    from mmengine.model import ExponentialMovingAverage
    from visionssm.mm.optim import ForeachExponentialMovingAverage
    model = _Named()
    plain = ExponentialMovingAverage(model, momentum=0.1, interval=2, update_buffers=update_buffers)
    foreach = ForeachExponentialMovingAverage(model, momentum=0.1, interval=2, update_buffers=update_buffers)
    x = torch.randn(4, 3, 8, 8)
    for step in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(x)   # BatchNorm's running statistics change: the buffers
        plain.update_parameters(model)
        foreach.update_parameters(model)
    assert foreach.steps == plain.steps == 6
    for a, b in zip(foreach.module.state_dict().values(), plain.module.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(foreach.module.body[0].weight, model.body[0].weight)   # an average, not a copy


def test_foreach_ema_never_reads_its_step_count_from_the_device(monkeypatch):
    """Reading the ``steps`` buffer (on the GPU in training) made the host wait for the GPU at every step: after the
    first step the count comes from the host, also across a loaded state dict, with mmengine's values."""
    from mmengine.model import ExponentialMovingAverage
    from visionssm.mm.optim import ForeachExponentialMovingAverage
    model = _Named()
    plain = ExponentialMovingAverage(model, momentum=0.1, interval=2)
    foreach = ForeachExponentialMovingAverage(model, momentum=0.1, interval=2)
    resumed = ForeachExponentialMovingAverage(model, momentum=0.1, interval=2)
    x = torch.randn(4, 3, 8, 8)
    for step in range(7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(x)
        plain.update_parameters(model)
        if step == 3:
            resumed.load_state_dict(foreach.state_dict())   # as a resumed run loads it
        if step >= 3:
            resumed.update_parameters(model)
        with monkeypatch.context() as m:
            if step > 0:
                for name in ('__bool__', 'item', '__int__', '__index__'):
                    m.setattr(torch.Tensor, name, lambda t: pytest.fail('the step count was read on the device'))
            foreach.update_parameters(model)
    assert int(foreach.steps) == int(resumed.steps) == 7
    for a, b, c in zip(foreach.module.state_dict().values(), plain.module.state_dict().values(),
                       resumed.module.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(c, b)


def test_the_recipes_use_the_foreach_ema():
    from pathlib import Path
    from mmengine.config import Config
    root = Path(__file__).resolve().parents[1] / 'configs/classification'
    hooks = [h for path in sorted(root.glob('*/*.py')) for h in Config.fromfile(str(path)).get('custom_hooks', [])
             if h['type'] == 'EMAHook']
    assert len(hooks) >= 10 and all(h['ema_type'] == 'visionssm.ForeachExponentialMovingAverage' for h in hooks)


def test_a_tied_parameter_is_refused_unless_bypassed():
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match='bypass_duplicate'):
        GroupedOptimWrapperConstructor(copy.deepcopy(CFG), dict(bias_decay_mult=0.0))(tied)
    wrapper = GroupedOptimWrapperConstructor(copy.deepcopy(CFG), dict(bias_decay_mult=0.0, bypass_duplicate=True))(tied)
    assert sum(len(g['params']) for g in wrapper.optimizer.param_groups) == 3
