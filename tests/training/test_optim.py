from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mambaseq.config import MambaConfig
from mambaseq.models import MambaLM
from mambaseq.training import make_optimizer, make_scheduler, parameter_groups, warmup_cosine
from mambaseq.training.optim import mark_weight_decay


def _groups_by_name(model, weight_decay=0.1):
    decay, no_decay = parameter_groups(model, weight_decay)
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    return decay, no_decay, decay_names, no_decay_names


def _tiny(**overrides):
    return MambaLM(MambaConfig.from_preset("tiny", **overrides))


def test_group_weight_decay_values():
    decay, no_decay, _, _ = _groups_by_name(_tiny(), weight_decay=0.25)
    assert decay["weight_decay"] == 0.25
    assert no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("bias", [False, True])
def test_no_decay_group(bias):
    model = _tiny(bias=bias)
    _, _, decay, no_decay = _groups_by_name(model)
    for name, _ in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        is_norm = ".norm." in f".{name}" or "norm_f" in name
        if leaf in ("A_log", "D", "bias") or is_norm:
            assert name in no_decay and name not in decay, name
    # Spot checks that the walk above met each kind.
    assert "backbone.layers.0.mixer.A_log" in no_decay
    assert "backbone.layers.1.mixer.D" in no_decay
    assert "backbone.layers.0.mixer.dt_proj.bias" in no_decay
    assert "backbone.layers.0.mixer.conv1d.bias" in no_decay
    assert "backbone.layers.0.norm.weight" in no_decay
    assert "backbone.norm_f.weight" in no_decay
    if bias:
        assert "backbone.layers.0.mixer.in_proj.bias" in no_decay
        assert "backbone.layers.0.mixer.out_proj.bias" in no_decay


@pytest.mark.parametrize("layernorm", [False, True])
def test_layernorm_weight_and_bias_not_decayed(layernorm):
    model = _tiny(rms_norm=not layernorm)
    _, _, decay, no_decay = _groups_by_name(model)
    assert "backbone.norm_f.weight" in no_decay
    if layernorm:
        assert "backbone.norm_f.bias" in no_decay
    assert not any("norm" in name for name in decay)


def test_decay_group_holds_the_matrices():
    model = _tiny(tie_embeddings=False)
    _, _, decay, _ = _groups_by_name(model)
    for layer in range(model.config.n_layer):
        for proj in ("in_proj", "x_proj", "dt_proj", "out_proj", "conv1d"):
            assert f"backbone.layers.{layer}.mixer.{proj}.weight" in decay
    assert "backbone.embedding.weight" in decay
    assert "lm_head.weight" in decay
    assert not any(name.endswith(("A_log", ".D", "bias")) for name in decay)


@pytest.mark.parametrize("tied", [True, False])
def test_every_parameter_appears_exactly_once(tied):
    model = _tiny(tie_embeddings=tied)
    decay, no_decay, _, _ = _groups_by_name(model)
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_tied_weight_appears_once():
    model = _tiny(tie_embeddings=True)
    assert model.lm_head.weight is model.backbone.embedding.weight
    decay, no_decay, _, _ = _groups_by_name(model)
    everything = decay["params"] + no_decay["params"]
    assert sum(p is model.lm_head.weight for p in everything) == 1


def test_marked_groups_survive_flattening_into_shards():
    """As FSDP leaves them when the optimizer is made: every parameter a 1-D view of its shard."""
    model = _tiny(tie_embeddings=False)
    _, _, decay, no_decay = _groups_by_name(model)
    mark_weight_decay(model)
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.reshape(-1)[: max(1, param.numel() // 2)]
    assert _groups_by_name(model)[2:] == (decay, no_decay)


def test_frozen_parameters_left_out():
    model = _tiny()
    model.backbone.layers[0].mixer.in_proj.weight.requires_grad_(False)
    decay, no_decay, _, _ = _groups_by_name(model)
    frozen = model.backbone.layers[0].mixer.in_proj.weight
    assert not any(p is frozen for p in decay["params"] + no_decay["params"])


@pytest.mark.parametrize(("warmup", "total", "min_ratio"), [(10, 100, 0.1), (100, 1000, 0.0), (7, 50, 0.3)])
def test_warmup_cosine_key_points(warmup, total, min_ratio):
    def f(step):
        return warmup_cosine(step, warmup, total, min_ratio)

    assert f(0) == pytest.approx(1 / warmup)
    assert f(warmup // 2 - 1) == pytest.approx((warmup // 2) / warmup)
    assert f(warmup - 1) == pytest.approx(1.0)  # last warmup step reaches the peak
    assert f(warmup) == pytest.approx(1.0)  # cosine starts at the peak
    midpoint = warmup + (total - warmup) / 2
    assert f(midpoint) == pytest.approx(min_ratio + (1 - min_ratio) / 2)
    assert f(total) == pytest.approx(min_ratio)
    assert f(total + 50) == pytest.approx(min_ratio)


def test_warmup_cosine_quarter_point():
    warmup, total, min_ratio = 20, 220, 0.1
    quarter = warmup + (total - warmup) // 4
    expected = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi / 4))
    assert warmup_cosine(quarter, warmup, total, min_ratio) == pytest.approx(expected)


def test_warmup_cosine_is_monotone():
    values = [warmup_cosine(s, 10, 60) for s in range(70)]
    assert all(a < b for a, b in itertools.pairwise(values[:10]))  # warmup: steps 0..9
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert max(values) == pytest.approx(1.0)


def test_warmup_cosine_without_warmup():
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 0, 100, min_ratio=0.2) == pytest.approx(0.2)


def test_make_scheduler_follows_warmup_cosine():
    model = _tiny()
    optimizer = make_optimizer(model, lr=1e-3)
    scheduler = make_scheduler(optimizer, warmup_steps=4, total_steps=20)
    for step in range(20):
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(1e-3 * warmup_cosine(step, 4, 20))
        optimizer.step()
        scheduler.step()


def test_make_optimizer_settings():
    optimizer = make_optimizer(_tiny(), lr=2e-3, weight_decay=0.05, betas=(0.8, 0.9))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 2e-3 and g["betas"] == (0.8, 0.9) for g in optimizer.param_groups)


@pytest.fixture
def one_thread():
    # The model is tiny: one thread is as fast as two, and does not slow down tenfold (OpenMP
    # spin-waiting) when another process competes for the two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_training_tiny_model_lowers_the_loss():
    model = _tiny().train()
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (4, 64))
    optimizer = make_optimizer(model, lr=3e-3)

    def loss_fn():
        logits = model(batch[:, :-1])[..., :vocab]
        return F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))

    losses = []
    for _ in range(30):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = loss_fn().item()
    assert all(math.isfinite(v) for v in losses)
    assert final < 0.5 * losses[0], (losses[0], final)
