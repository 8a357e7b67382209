"""visionssm.cuda_graph: a backbone's training forward and backward replayed as CUDA graphs. On the CPU the
option's validation and its eager fallback; on a GPU, the graphed steps against eager ones."""
import copy
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import visionssm  # noqa: F401
from visionssm.cuda_graph import GraphedModule

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def _classifier(**kwargs):
    """The mmengine classifier (the ``cls`` extra); the GraphedModule tests need torch only."""
    pytest.importorskip('mmengine')
    from visionssm.mm.classification import ImageClassifier
    return ImageClassifier(backbone=dict(model_name='test_vmamba'), num_classes=4, **kwargs)


def test_cuda_graph_option_is_checked():
    with pytest.raises(TypeError, match='cuda_graph must be True or False'):
        _classifier(cuda_graph='yes')
    with pytest.raises(ValueError, match='cuda_graph and compile_backbone exclude each other'):
        _classifier(cuda_graph=True, compile_backbone=True)


def test_cuda_graph_on_cpu_steps_eagerly_and_stays_out_of_state_and_copies():
    torch.manual_seed(0)
    graphed = _classifier(cuda_graph=True).train()
    eager = _classifier().train()
    eager.load_state_dict(graphed.state_dict())
    assert graphed.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match='cuda_graph: the inputs are on cpu'):
        out = graphed.run_backbone(x)
    torch.testing.assert_close(out, eager.run_backbone(x))
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # warned once only
        graphed.run_backbone(x)
    twin = copy.deepcopy(graphed)           # mmengine's EMA model is a deep copy: it makes its own wrapper
    assert '_compiled_submodules' in graphed.__dict__ and '_compiled_submodules' not in twin.__dict__
    assert twin.graphed('backbone').module is twin.backbone


# --- the replay's autograd plumbing, on the CPU: a stand-in for the captured graphs ----------------------------------

class _Replayed:
    """Stands for a captured graph: ``replay()`` runs ``fn``."""

    def __init__(self, fn):
        self.replay = fn


class _LinearGraphs:
    """The static tensors and two 'graphs' of ``y = x @ w``, as ``visionssm.cuda_graph._Graphs`` holds them."""

    def __init__(self, w):
        self.input, self.pending, self.differentiable = torch.zeros(2, 3), None, (True,)
        self.outputs, self.grad_outputs, self.grads, self.grad_index = (torch.zeros(2, 4),), (torch.zeros(2, 4),), \
            (torch.zeros_like(w),), [0]
        self.forward = _Replayed(lambda: self.outputs[0].copy_(self.input @ w.detach()))
        self.backward = _Replayed(lambda: self.grads[0].copy_(self.input.T @ self.grad_outputs[0]))


def test_replayed_steps_hand_autograd_fresh_gradients_that_accumulate():
    from visionssm.cuda_graph import _Replay
    w = torch.randn(3, 4, requires_grad=True)
    graphs = _LinearGraphs(w)
    xs = [torch.randn(2, 3) for _ in range(2)]
    for x in xs:   # two steps without zero_grad: the gradients add up, as in eager mode
        (y,) = _Replay.apply(graphs, x, w)
        torch.testing.assert_close(y, x @ w.detach())
        y.square().sum().backward()
    expected = sum(x.T @ (2 * x @ w.detach()) for x in xs)
    torch.testing.assert_close(w.grad, expected)
    assert w.grad.data_ptr() != graphs.grads[0].data_ptr()   # not the graph's buffer, which the next replay rewrites


def test_replay_refuses_a_second_forward_or_backward_that_would_read_overwritten_activations():
    from visionssm.cuda_graph import _Replay
    w = torch.randn(3, 4, requires_grad=True)
    graphs = _LinearGraphs(w)
    (y,) = _Replay.apply(graphs, torch.randn(2, 3), w)
    with pytest.raises(RuntimeError, match='a second forward before the first one'):
        _Replay.apply(graphs, torch.randn(2, 3), w)
    loss = y.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='a second backward through one graphed forward'):
        loss.backward()
    del y, loss
    (y,) = _Replay.apply(graphs, torch.randn(2, 3), w)   # after the backward: fine
    del y
    _Replay.apply(graphs, torch.randn(2, 3), w)          # an output dropped without backward: fine


def test_graphed_module_checks_its_input_and_hooks_before_capturing():
    model = torch.nn.Linear(3, 4)
    graphed = GraphedModule(model)
    with pytest.raises(ValueError, match='inputs that do not require grad'):
        graphed(torch.randn(2, 3, requires_grad=True))
    from visionssm.cuda_graph import _inspect
    seq = torch.nn.Sequential(torch.nn.Linear(3, 3), model)
    state, params, hooked = _inspect(seq)
    assert params == tuple(seq.parameters()) and hooked is None
    handle = model.register_forward_hook(lambda *args: None)
    assert _inspect(seq)[2] is model
    handle.remove()
    model.weight.requires_grad_(False)                       # what a capture bakes in changes with
    assert _inspect(seq)[0] != state and _inspect(seq)[1] == params[:2] + params[3:]
    model.weight.requires_grad_(True)
    model.weight = torch.nn.Parameter(model.weight.detach())   # a replaced parameter (load_state_dict(assign=True))
    assert _inspect(seq)[0] != state
    seq[0].eval()
    assert _inspect(seq)[0][0] == (True, False, True)


# --- on a GPU ---------------------------------------------------------------------------------------------------------

def _pair(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4, **kwargs).cuda().train()
    return model, copy.deepcopy(model)


def _step(model, run, x, y, lr=0.1):
    logits = run(x)
    F.cross_entropy(logits.float(), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    model.zero_grad(set_to_none=True)
    return logits.detach().clone(), grads


@cuda
@pytest.mark.parametrize('name, dtype', [(name, None) for name in ('test_vmamba', 'test_groupmamba', 'test_vim',
                                                                     'test_efficientvmamba')]
                         + [('test_vmamba', torch.bfloat16), ('test_groupmamba', torch.bfloat16)])
def test_graphed_steps_equal_eager_steps(name, dtype, monkeypatch):
    """Three SGD steps through the graphs give the eager steps' logits, gradients and weights."""
    # float32 as float32: TF32 convolutions and GEMMs may pick other algorithms in a capture
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    graphed_model, eager_model = _pair(name)
    graphed = GraphedModule(graphed_model)
    gen = torch.Generator('cuda').manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 64, 64, device='cuda', generator=gen)   # the test models' input size
        y = torch.randint(0, 4, (4,), device='cuda', generator=gen)
        with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
            out, grads = _step(graphed_model, graphed, x, y)
            ref, ref_grads = _step(eager_model, eager_model, x, y)
        tol = dict(rtol=2e-2, atol=2e-2) if dtype else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out, ref, **tol)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, **tol)
    assert len(graphed.graphs) == 1
    for p, r in zip(graphed_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, r, **tol)
    # buffers (BatchNorm statistics) as after the same three steps: the capture's warm-up left no trace
    for b, r in zip(graphed_model.buffers(), eager_model.buffers()):
        torch.testing.assert_close(b, r, **tol)


@cuda
def test_graphed_module_falls_back_and_recaptures(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    model, eager = _pair('test_vmamba', drop_path_rate=0.5)
    graphed = GraphedModule(model, max_graphs=1)
    x = torch.randn(4, 3, 32, 32, device='cuda')
    # drop path draws fresh randomness at every replay
    first = graphed(x).detach().clone()
    second = graphed(x).detach().clone()
    assert not torch.equal(first, second) and len(graphed.graphs) == 1
    # eval and no-grad calls are eager
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(graphed(x), model(x))
    # a submodule's mode is part of what the graphs bake in: back in train mode with one block in eval, a new capture
    model.train()
    old = next(iter(graphed.graphs.values()))
    model.stages[0].eval()
    graphed(x)
    assert next(iter(graphed.graphs.values())) is not old
    model.train()
    # a second input size beyond max_graphs runs eagerly, with a warning
    with pytest.warns(UserWarning, match='more than 1 input signatures'):
        graphed(torch.randn(2, 3, 32, 32, device='cuda'))
    # a parameter that moved is followed by a new capture, whose step is right
    for m in (model, eager):
        for mod in m.modules():
            if hasattr(mod, 'drop_prob'):
                mod.drop_prob = 0.0
    old = next(iter(graphed.graphs.values()))
    model.head.fc.weight.data = model.head.fc.weight.data.clone()
    graphed(x).float().square().mean().backward()
    assert next(iter(graphed.graphs.values())) is not old
    eager(x).float().square().mean().backward()
    for p, r in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5)
    # a hook on a submodule must run: eager steps, with a warning
    model.zero_grad(set_to_none=True)
    calls = []
    handle = model.stages[1].register_forward_hook(lambda *args: calls.append(1))
    with pytest.warns(UserWarning, match='has hooks, which a replay would skip'):
        graphed(x)
    handle.remove()
    assert calls == [1]


@cuda
def test_graphs_keep_the_cached_tables_their_kernels_read():
    """A captured graph reads route tables and gather indices by address; evicting them from their caches (an eager
    step at many other sizes does) must not free what the graph reads."""
    import gc
    from visionssm.kernels import triton_scan
    model, eager = _pair('test_plainmamba')   # direction codes from cached_constants, routes from the scan's caches
    graphed = GraphedModule(model)
    x = torch.randn(2, 3, 64, 64, device='cuda')
    graphed(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    for fn in (triton_scan._forward_launch, triton_scan._backward_launch, triton_scan._route_tables):
        fn.cache_clear()
    import visionssm.models.plainmamba as pm
    pm._cached_direction_codes.cache_clear()
    gc.collect()
    junk = [torch.full((1 << 20,), -7, dtype=torch.int32, device='cuda') for _ in range(64)]   # reuse freed memory
    out = graphed(x)
    out.float().sum().backward()
    ref = eager(x)
    ref.float().sum().backward()
    del junk
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for p, r in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_image_classifier_trains_through_cuda_graphs(dtype, monkeypatch):
    """A few steps of the classifier (mixup, autocast with its loss scaler, SGD with momentum, gradient clipping,
    two-step gradient accumulation) with cuda_graph=True land on the weights of the same steps taken eagerly."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(0)
    graphed = _classifier(cuda_graph=True, mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0)).cuda().train()
    eager = copy.deepcopy(graphed)
    eager.cuda_graph = False
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import BaseDataElement
    results = []
    for model in (graphed, eager):
        wrapper = build_optim_wrapper(model, dict(type='AmpOptimWrapper', dtype=dtype, accumulative_counts=2,
                                                  clip_grad=dict(max_norm=1.0),
                                                  optimizer=dict(type='SGD', lr=0.1, momentum=0.9)))
        torch.manual_seed(1)   # the same mixup / cutmix draws for both (timm's Mixup draws from numpy)
        np.random.seed(1)
        for step in range(4):
            gen = torch.Generator('cuda').manual_seed(step)
            x = torch.randn(4, 3, 32, 32, device='cuda', generator=gen)
            samples = [BaseDataElement(gt_label=torch.tensor(i, device='cuda')) for i in range(4)]
            with wrapper.optim_context(model):
                loss = model(x, samples, mode='loss')['loss']
            wrapper.update_params(loss)
        results.append([p.detach().clone() for p in model.parameters()])
    assert len(graphed.graphed('backbone').graphs) == 1   # the steps did go through the graphs
    for g, e in zip(*results):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5)
