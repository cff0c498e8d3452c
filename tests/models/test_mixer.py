"""The selective SSM mixer: paper initialisation, shapes, streaming."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mambaseq import MambaConfig
from mambaseq.models import LayerState, MambaMixer


def small_config(**overrides):
    return MambaConfig(**{"d_model": 32, "n_layer": 2, "vocab_size": 12, "d_state": 8, **overrides})


def test_a_is_s4d_real():
    mixer = MambaMixer(small_config())
    A = -torch.exp(mixer.A_log)
    assert torch.allclose(A, -torch.arange(1, 9).float().expand(64, 8))


def test_d_starts_at_one():
    assert torch.equal(MambaMixer(small_config()).D, torch.ones(64))


def test_dt_bias_gives_step_sizes_in_range(seed):
    cfg = small_config(d_model=256, dt_min=0.002, dt_max=0.05)
    dt = F.softplus(MambaMixer(cfg).dt_proj.bias)
    assert dt.min() >= cfg.dt_min * (1 - 1e-4) and dt.max() <= cfg.dt_max * (1 + 1e-4)
    # Log-uniform: about half of the draws fall below the geometric mean.
    below = (dt < math.sqrt(cfg.dt_min * cfg.dt_max)).float().mean().item()
    assert 0.35 < below < 0.65


def test_dt_floor_applies():
    cfg = small_config(dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3)
    dt = F.softplus(MambaMixer(cfg).dt_proj.bias.double())
    assert torch.allclose(dt, torch.full_like(dt, 1e-3), rtol=1e-4)


def test_dt_rank_auto():
    mixer = MambaMixer(small_config(d_model=40))
    assert mixer.dt_proj.in_features == math.ceil(40 / 16)
    assert mixer.x_proj.out_features == 3 + 2 * 8


@pytest.mark.parametrize("L", [1, 9, 64])
def test_forward_shape(seed, L):
    mixer = MambaMixer(small_config())
    assert mixer(torch.randn(3, L, 32)).shape == (3, L, 32)


@pytest.mark.parametrize("split", [1, 7, 20])
def test_streaming_with_state_equals_one_call(seed, split):
    cfg = small_config()
    mixer = MambaMixer(cfg).double()
    x = torch.randn(2, 24, 32, dtype=torch.float64)
    full = mixer(x)
    state = LayerState(conv=torch.zeros(2, cfg.d_inner, cfg.d_conv - 1, dtype=torch.float64),
                       ssm=torch.zeros(2, cfg.d_inner, cfg.d_state))
    parts = [mixer(x[:, :split], state), mixer(x[:, split:], state)]
    assert rel_err(torch.cat(parts, 1), full) < 1e-6


def test_bfloat16_forward_is_close_to_fp32(seed):
    mixer = MambaMixer(small_config())
    x = torch.randn(2, 33, 32)
    ref = mixer(x)
    out = mixer.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 5e-2


# --- non-selective (time-invariant) mixer: config.selective=False -------------------------------

def lti_mixer(**overrides):
    """A float64 non-selective mixer with every parameter moved off its initial value, so that a
    swapped B/C, a missing D or a wrong Δ shows."""
    mixer = MambaMixer(small_config(selective=False, bias=True, **overrides)).double()
    with torch.no_grad():
        for param in mixer.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return mixer


def lti_loop(mixer, x):
    """The mixer's math written out in float64: projections, causal depthwise conv and a
    sequential loop of h_t = exp(Δ A) h_{t-1} + Δ B u_t, y_t = C·h_t + D u_t, gated by silu(z)."""
    cfg = mixer.config
    d_inner, K = cfg.d_inner, cfg.d_conv
    xz = x @ mixer.in_proj.weight.T + mixer.in_proj.bias
    u, z = xz[..., :d_inner], xz[..., d_inner:]  # (batch, L, d_inner)
    weight = mixer.conv1d.weight[:, 0]  # (d_inner, K)
    padded = F.pad(u, (0, 0, K - 1, 0))
    conv = sum(padded[:, k:k + u.shape[1]] * weight[:, k] for k in range(K)) + mixer.conv1d.bias
    u = F.silu(conv)
    delta = F.softplus(mixer.dt_bias)  # (d_inner,): the same at every step
    A = -torch.exp(mixer.A_log)
    h = x.new_zeros(x.shape[0], d_inner, cfg.d_state)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, None] * A) * h + (delta * u[:, t])[..., None] * mixer.B
        ys.append((h * mixer.C).sum(-1) + mixer.D * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ mixer.out_proj.weight.T + mixer.out_proj.bias


def test_non_selective_has_no_input_dependent_projections():
    mixer = MambaMixer(small_config(selective=False))
    names = dict(mixer.named_parameters())
    assert not any(n.startswith(("x_proj", "dt_proj")) for n in names)
    assert names["B"].shape == names["C"].shape == (64, 8) and names["dt_bias"].shape == (64,)
    assert all(getattr(names[n], "_no_weight_decay", False) for n in ("B", "C", "dt_bias"))


def test_non_selective_dt_init_in_range(seed):
    cfg = small_config(d_model=256, dt_min=0.002, dt_max=0.05, selective=False)
    dt = F.softplus(MambaMixer(cfg).dt_bias)
    assert dt.min() >= cfg.dt_min * (1 - 1e-4) and dt.max() <= cfg.dt_max * (1 + 1e-4)


@pytest.mark.parametrize("L", [1, 17, 40])
def test_non_selective_forward_matches_lti_loop(seed, L):
    mixer = lti_mixer()
    x = torch.randn(2, L, 32, dtype=torch.float64)
    # The mixer hands A, D and dt_bias to the scan in fp32 (the kernel contract), hence ~1e-8.
    assert rel_err(mixer(x), lti_loop(mixer, x)) < 1e-6


def test_non_selective_gradients_match_lti_loop(seed):
    mixer = lti_mixer(d_conv=3)
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    weight = torch.randn(2, 21, 32, dtype=torch.float64)
    names = ("dt_bias", "B", "C", "A_log", "D", "in_proj.weight", "conv1d.weight")
    params = dict(mixer.named_parameters())
    grads = torch.autograd.grad((mixer(x) * weight).sum(), [params[n] for n in names])
    expected = torch.autograd.grad((lti_loop(mixer, x) * weight).sum(), [params[n] for n in names])
    for name, g, e in zip(names, grads, expected, strict=True):
        assert e.abs().sum() > 0, name
        assert rel_err(g, e) < 1e-6, name


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_step_reproduces_forward(seed, selective, batch):
    cfg = small_config(selective=selective)
    mixer = MambaMixer(cfg)
    x = torch.randn(batch, 19, 32)
    full = mixer(x)
    state = LayerState(conv=torch.zeros(batch, cfg.d_inner, cfg.d_conv - 1),
                       ssm=torch.zeros(batch, cfg.d_inner, cfg.d_state))
    with torch.no_grad():
        stepped = torch.stack([mixer.step(x[:, t], state) for t in range(19)], 1)
    assert rel_err(stepped, full) < 1e-5


@pytest.mark.parametrize("split", [1, 7, 20])
def test_non_selective_streaming_with_state_equals_one_call(seed, split):
    mixer = lti_mixer()
    cfg = mixer.config
    x = torch.randn(2, 24, 32, dtype=torch.float64)
    state = LayerState(conv=torch.zeros(2, cfg.d_inner, cfg.d_conv - 1, dtype=torch.float64),
                       ssm=torch.zeros(2, cfg.d_inner, cfg.d_state))
    parts = [mixer(x[:, :split], state), mixer(x[:, split:], state)]
    assert rel_err(torch.cat(parts, 1), lti_loop(mixer, x)) < 1e-6


def test_selective_flag_round_trips_and_defaults_for_old_configs():
    cfg = small_config(selective=False)
    assert MambaConfig.from_json(cfg.to_json()) == cfg
    old = small_config().to_dict()
    del old["selective"]  # a config.json written before the field existed
    assert MambaConfig.from_dict(old).selective is True
    with pytest.raises(ValueError, match="selective must be true or false"):
        small_config(selective="no")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_non_selective_triton_matches_reference_on_cuda(seed, monkeypatch):
    """Constant B/C through the Triton scan (forward, backward) and state update (expanded B/C)."""
    cfg = small_config(d_model=64, d_state=16, selective=False)
    mixer = MambaMixer(cfg).cuda()
    x = torch.randn(2, 300, 64, device="cuda")
    results = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("MAMBASEQ_KERNELS", backend)
        mixer.zero_grad()
        out = mixer(x)
        out.square().sum().backward()
        state = LayerState(conv=torch.zeros(2, cfg.d_inner, cfg.d_conv - 1, device="cuda"),
                           ssm=torch.zeros(2, cfg.d_inner, cfg.d_state, device="cuda"))
        with torch.no_grad():
            stepped = torch.stack([mixer.step(x[:, t], state) for t in range(20)], 1)
        results[backend] = (out.detach(), stepped, {n: p.grad.clone() for n, p in mixer.named_parameters()})
    assert rel_err(results["triton"][0], results["reference"][0]) < 1e-5
    assert rel_err(results["triton"][1], results["reference"][0][:, :20]) < 1e-5
    for name, grad in results["reference"][2].items():
        assert rel_err(results["triton"][2][name], grad) < 1e-4, name
