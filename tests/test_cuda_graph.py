"""visionssm.cuda_graph: a backbone's training forward and backward replayed as CUDA graphs. On the CPU the
option's validation and its eager fallback; on a GPU, the graphed steps against eager ones."""
import copy
import warnings

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
def test_graphed_module_falls_back_recaptures_and_refuses_accumulation():
    model, _ = _pair('test_vmamba', drop_path_rate=0.5)
    graphed = GraphedModule(model, max_graphs=1)
    x = torch.randn(4, 3, 32, 32, device='cuda')
    # drop path draws fresh randomness at every replay
    first, second = graphed(x).detach().clone(), graphed(x).detach().clone()
    assert not torch.equal(first, second)
    # eval and no-grad calls are eager
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(graphed(x), model(x))
    model.train()
    # a second input size beyond max_graphs runs eagerly, with a warning
    with pytest.warns(UserWarning, match='more than 1 input signatures'):
        graphed(torch.randn(2, 3, 32, 32, device='cuda'))
    # a parameter that moved is followed by a new capture
    old = graphed.graphs[next(iter(graphed.graphs))]
    model.head.fc.weight.data = model.head.fc.weight.data.clone()
    graphed(x).sum().backward()
    assert graphed.graphs[next(iter(graphed.graphs))] is not old
    # gradients left from the step above: accumulating them would be wrong, so it raises
    with pytest.raises(RuntimeError, match='still hold gradients from an earlier step'):
        graphed(x)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match='inputs that do not require grad'):
        graphed(x.requires_grad_())


@cuda
def test_image_classifier_trains_through_cuda_graphs():
    """A few steps of the classifier (mixup, bf16 autocast, AdamW, gradient clipping) with cuda_graph=True land
    on the weights of the same steps taken eagerly."""
    torch.manual_seed(0)
    graphed = _classifier(cuda_graph=True).cuda().train()
    from mmengine.optim import build_optim_wrapper
    eager = copy.deepcopy(graphed)
    eager.cuda_graph = False
    results = []
    for model in (graphed, eager):
        wrapper = build_optim_wrapper(model, dict(type='AmpOptimWrapper', dtype='bfloat16',
                                                  clip_grad=dict(max_norm=1.0), optimizer=dict(type='AdamW', lr=1e-3)))
        gen = torch.Generator('cuda').manual_seed(2)
        for _ in range(3):
            x = torch.randn(4, 3, 32, 32, device='cuda', generator=gen)
            with wrapper.optim_context(model):
                loss = F.cross_entropy(model.run_backbone(x).float(), torch.arange(4, device='cuda'))
            wrapper.update_params(loss)
        results.append([p.detach().clone() for p in model.parameters()])
    for g, e in zip(*results):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)
