"""The memory-lean mixer path (`fused_inner`): same outputs and gradients as the plain mixer, and
what autograd keeps for backward shrinks to the mixer's input and the parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mambaseq import MambaConfig, MambaLM, kernels
from mambaseq.models import LayerState, MambaMixer


def config(**overrides) -> MambaConfig:
    return MambaConfig(**{"d_model": 32, "n_layer": 2, "vocab_size": 12, "d_state": 8, **overrides})


def twin_mixers(**overrides) -> tuple[MambaMixer, MambaMixer]:
    """A plain mixer and a fused one with the same (randomised) weights."""
    plain = MambaMixer(config(**overrides))
    with torch.no_grad():  # move every parameter off its init so no gradient is trivially shaped
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    fused = MambaMixer(config(**overrides, fused_inner=True))
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def run(mixer: MambaMixer, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and the gradients of the input and every parameter for the cotangent dy."""
    mixer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = mixer(x)
    y.backward(dy)
    grads = {name: p.grad for name, p in mixer.named_parameters()}
    grads["input"] = x.grad
    return y.detach(), grads


@pytest.mark.parametrize("batch,L,d_model,d_state,dt_rank,extra", [
    (1, 1, 16, 4, "auto", {}),
    (2, 37, 32, 8, "auto", {}),
    (3, 129, 24, 16, 5, {"conv_bias": False}),
    (2, 301, 32, 16, 2, {"bias": True}),  # several scan chunks (128) and biased projections
])
def test_fused_matches_plain_mixer(seed, batch, L, d_model, d_state, dt_rank, extra):
    plain, fused = twin_mixers(d_model=d_model, d_state=d_state, dt_rank=dt_rank, **extra)
    x = torch.randn(batch, L, d_model)
    dy = torch.randn(batch, L, d_model)
    y_ref, g_ref = run(plain, x, dy)
    y, g = run(fused, x, dy)
    assert rel_err(y, y_ref) <= 1e-5
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert g[name] is not None, name
        assert rel_err(g[name], g_ref[name]) <= 1e-5, name


def test_fused_under_bf16_autocast_matches_plain(seed):
    # The recompute re-enters the forward's autocast state: the same bf16 casts, the same result.
    plain, fused = twin_mixers()
    x, dy = torch.randn(2, 50, 32), torch.randn(2, 50, 32)
    results = []
    for mixer in (plain, fused):
        mixer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mixer(xi)
        assert y.dtype == torch.bfloat16
        y.float().backward(dy)
        results.append([y.float(), xi.grad] + [p.grad for p in mixer.parameters()])
    for ref, out in zip(*results, strict=True):
        assert out.dtype == ref.dtype
        assert rel_err(out, ref) <= 1e-2


def test_fused_lm_matches_plain_lm(seed):
    cfg = config(n_layer=3)
    plain = MambaLM(cfg)
    fused = MambaLM(config(n_layer=3, fused_inner=True))
    fused.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 12, (2, 65))
    losses, grads = [], []
    for model in (plain, fused):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for name in grads[0]:
        assert rel_err(grads[1][name], grads[0][name]) <= 1e-5, name


def saved_bytes_per_token(mixer: MambaMixer, x: torch.Tensor, autocast: bool = False) -> float:
    """Bytes of tensors autograd keeps for backward after one mixer forward, per token.

    Counts each storage once (views share it) and leaves out the parameters (the optimizer holds
    them anyway). The mixer's input counts: the plain path's in_proj keeps it too.
    """
    exclude = {p.untyped_storage().data_ptr() for p in mixer.parameters()}
    # Autocast's bf16 copies of the weights (and views of them) have a parameter's shape.
    weight_shapes = {s for p in mixer.parameters() for s in (tuple(p.shape), tuple(p.shape)[::-1])}
    batch, L = x.shape[:2]
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude and tuple(t.shape) not in weight_shapes:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = mixer(x)
    del y
    return sum(kept.values()) / (batch * L)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fused_keeps_only_its_input(autocast):
    cfg = config(d_model=64, d_state=16)
    plain, fused = twin_mixers(d_model=64, d_state=16)
    x = torch.randn(2, 301, 64, requires_grad=True)  # no activation has a weight's shape
    plain_bytes = saved_bytes_per_token(plain, x, autocast)
    fused_bytes = saved_bytes_per_token(fused, x, autocast)
    # One copy of the input per token (d_model values; bf16 under autocast), nothing else: far
    # under the 2*d_inner values of xz alone.
    assert fused_bytes == cfg.d_model * (2 if autocast else 4)
    assert plain_bytes >= 10 * fused_bytes
    print(f"saved bytes/token, d_model={cfg.d_model} d_inner={cfg.d_inner} d_state=16 "
          f"{'bf16 autocast' if autocast else 'fp32'}: plain {plain_bytes:.0f}, fused {fused_bytes:.0f}")


def test_fused_flag_defaults_off_and_round_trips():
    cfg = config(fused_inner=True)
    assert MambaConfig.from_json(cfg.to_json()) == cfg
    old = config().to_dict()
    del old["fused_inner"]  # a config.json written before the field existed
    assert MambaConfig.from_dict(old).fused_inner is False
    with pytest.raises(ValueError, match="fused_inner must be true or false"):
        config(fused_inner=1)


def test_streaming_and_non_selective_paths_ignore_the_flag(seed):
    # With a carried state the mixer streams through the plain path; chunks still join up.
    plain, fused = twin_mixers()
    x = torch.randn(2, 30, 32)
    cfg = fused.config

    def fresh_state() -> LayerState:
        return LayerState(conv=torch.zeros(2, cfg.d_inner, cfg.d_conv - 1),
                          ssm=torch.zeros(2, cfg.d_inner, cfg.d_state))

    with torch.no_grad():
        state = fresh_state()
        streamed = torch.cat([fused(x[:, :11], state), fused(x[:, 11:], state)], dim=1)
        assert rel_err(streamed, plain(x)) <= 1e-5
        lti_plain, lti_fused = twin_mixers(selective=False)
        assert torch.equal(lti_fused(x), lti_plain(x))


def test_fused_through_triton_kernels_under_interpreter(seed, monkeypatch):
    """The CUDA dispatch path (Triton conv and scan, the scan's own backward) at a tiny shape:
    on a CPU-only machine under TRITON_INTERPRET=1 by routing the dispatched ops to Triton."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain, fused = twin_mixers(d_model=16, d_state=4)
    plain, fused = plain.to(device), fused.to(device)
    x = torch.randn(1, 40, 16, device=device)
    dy = torch.randn(1, 40, 16, device=device)
    y_ref, g_ref = run(plain, x, dy)  # reference ops (or whatever CUDA dispatch picks)
    used: set[str] = set()

    def triton_dispatch(op: str, _device: torch.device):
        used.add(op)
        return kernels._triton_op(op)

    monkeypatch.setattr(kernels, "_dispatch", triton_dispatch)
    y_tri, g_tri = run(plain, x, dy)
    used.clear()
    y, g = run(fused, x, dy)
    assert used == {"causal_conv1d", "selective_scan"}
    assert rel_err(y_tri, y_ref) <= 1e-5
    assert rel_err(y, y_tri) <= 1e-5
    for name in g_ref:
        assert rel_err(g_tri[name], g_ref[name]) <= 1e-4, name
        assert rel_err(g[name], g_tri[name]) <= 1e-5, name


def test_fused_with_block_checkpointing_matches_plain(seed):
    # The two memory savers stack: checkpointing recomputes the block, whose mixer is the fused one.
    from mambaseq.training.lm_module import CausalLMModule

    plain = MambaLM(config())
    module = CausalLMModule(config(fused_inner=True).to_dict(), checkpoint_activations=True)
    module.model.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 12, (1, 41))
    grads = []
    for model in (plain, module.model):
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert rel_err(grads[1][name], grads[0][name]) <= 1e-5, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_fused_matches_plain_on_the_gpu_at_real_shapes(seed, dtype):
    # dna-1.4m's mixer (d_model 128, d_state 16) over several Triton scan chunks.
    plain, fused = (m.cuda() for m in twin_mixers(d_model=128, d_state=16))
    x, dy = torch.randn(2, 4099, 128, device="cuda"), torch.randn(2, 4099, 128, device="cuda")
    results = []
    for mixer in (plain, fused):
        mixer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = mixer(xi)
        y.float().backward(dy)
        results.append([y.float(), xi.grad] + [p.grad for p in mixer.parameters()])
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for ref, out in zip(*results, strict=True):
        assert torch.isfinite(out).all() and rel_err(out, ref) <= tolerance
