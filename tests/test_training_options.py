"""fit's training options for large models: learning-rate warm-up, EMA of weights, AMP guard."""
import math

import pytest
import torch

import torchcfm_local as tl
from torchcfm_local.composer import lr_factor


def test_lr_factor_warmup_and_cosine():
    assert [lr_factor(s, 100, None, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(0, 100, "cosine", 0) == 1.0
    assert lr_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(1, 100, "cosine", 4) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 100)))
    assert lr_factor(7, 100, None, 0) == 1.0


def _model(seed=0):
    torch.manual_seed(seed)
    return tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 2), velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))


def test_ema_weights_become_the_block():
    x = torch.randn(500, 2)
    lfm = _model()
    weight = lfm.nets[0].net[0].weight
    ema, decay = weight.detach().clone(), 0.9
    seen = []

    def record(block, step, loss):
        if block == 1:
            seen.append(weight.detach().clone())  # raw weights after each optimizer step

    lfm.fit(x, batches_per_block=20, batch_size=50, seed=0, ema_decay=decay, callback=record, progress=False)
    for w in seen:
        ema = decay * ema + (1 - decay) * w
    assert len(seen) == 20
    assert torch.allclose(lfm.nets[0].net[0].weight, ema, atol=1e-6)
    assert not torch.allclose(lfm.nets[0].net[0].weight, seen[-1], atol=1e-4)  # not the raw weights


def test_resume_with_ema_and_warmup_is_exact(tmp_path):
    x = torch.randn(500, 2)
    kw = dict(batches_per_block=20, batch_size=50, seed=0, ema_decay=0.9, warmup=5, progress=False)
    ref = _model()
    ref.fit(x, **kw)

    def crash(block, step, loss):
        if block == 2 and step == 13:
            raise KeyboardInterrupt

    run = _model()
    with pytest.raises(KeyboardInterrupt):
        run.fit(x, checkpoint_dir=tmp_path, checkpoint_every=4, callback=crash, **kw)
    resumed = _model(seed=1)
    resumed.fit(x, checkpoint_dir=tmp_path, resume=True, **kw)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ema_decay: 0.9 -> 0.99"):
        _model().fit(x, checkpoint_dir=tmp_path, resume=True, **{**kw, "ema_decay": 0.99})


def test_training_option_errors():
    x = torch.randn(100, 2)
    with pytest.raises(ValueError, match="amp=True needs a model on a CUDA device"):
        _model().fit(x, batches_per_block=2, batch_size=10, amp=True, progress=False)
    with pytest.raises(ValueError, match="ema_decay must be a float in"):
        _model().fit(x, batches_per_block=2, batch_size=10, ema_decay=1.0, progress=False)
    with pytest.raises(ValueError, match="warmup must be an int"):
        _model().fit(x, batches_per_block=2, batch_size=10, warmup=-1, progress=False)
