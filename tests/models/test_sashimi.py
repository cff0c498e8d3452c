"""SaShiMi U-Net of Mamba blocks: config, causality, the pooling convention, step mode, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import CheckpointError, from_pretrained, load_weights, read_model_dir, save_pretrained
from mambaseq.generation import SamplingConfig, generate
from mambaseq.models import SASHIMI_PRESETS, MambaBlock, SashimiConfig, SashimiLM

POOLS = [[4], [4, 4], [2, 3]]


def small_config(pool=(4, 4), selective=True, **overrides):
    n_stages = len(pool) + 1
    base = dict(d_model=16, n_layer=[1] * n_stages, pool=list(pool), vocab_size=32, d_state=4, d_conv=3,
                selective=selective)
    return SashimiConfig(**{**base, **overrides})


def perturbed(config, dtype=torch.float32):
    """A model with every weight moved off its init, so zero biases or a skipped tensor show."""
    model = SashimiLM(config).to(dtype)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def selective_patterns(n_stages):
    """All selective, none, and mixed patterns (outer selective and inner not, and the reverse)."""
    mixed = [s % 2 == 0 for s in range(n_stages)]
    return [True, False, mixed, [not s for s in mixed]]


CASES = [(pool, sel) for pool in POOLS for sel in selective_patterns(len(pool) + 1)]


def case_id(case):
    pool, sel = case
    sel_name = {True: "S", False: "N"}
    tag = sel_name[sel] if isinstance(sel, bool) else "".join(sel_name[s] for s in sel)
    return f"pool{'x'.join(map(str, pool))}-{tag}"


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SASHIMI_PRESETS))
def test_preset_json_round_trip(name, tmp_path):
    config = SashimiConfig.from_preset(name)
    assert SashimiConfig.from_json(config.to_json()) == config
    config.to_json(tmp_path / "c.json")
    assert SashimiConfig.from_json(tmp_path / "c.json") == config
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data and SashimiConfig.from_dict(data) == config


def test_scalars_stand_for_every_stage():
    config = SashimiConfig(d_model=8, n_layer=3, pool=[2, 2, 2], selective=False)
    assert config.n_layer == [3, 3, 3, 3] and config.selective == [False] * 4
    assert [config.width(s) for s in range(4)] == [8, 16, 32, 64]
    assert config.block_config(2).d_model == 32 and config.block_config(2).selective is False


@pytest.mark.parametrize("overrides,message", [
    (dict(pool=[4, 0]), "pool must be a list of positive integers"),
    (dict(pool="44"), "pool must be a list of positive integers"),
    (dict(n_layer=[1, 1]), r"n_layer must be .* a list of 3"),
    (dict(n_layer=[1, -1, 1]), "n_layer must be"),
    (dict(selective=[True, False]), "selective must be true/false or a list of 3"),
    (dict(selective="yes"), "selective must be"),
    (dict(d_model=0), "d_model must be a positive integer"),
    (dict(pool_expand=True), "pool_expand must be a positive integer"),
    (dict(dt_min=0.5, dt_max=0.1), "dt_min <= dt_max"),
])
def test_bad_config_is_a_one_line_value_error(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        SashimiConfig(**{"d_model": 16, "n_layer": 1, **overrides})
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid SashimiConfig: ")


def test_unknown_keys_and_presets_are_refused():
    with pytest.raises(ValueError, match="unknown SashimiConfig keys: n_head"):
        SashimiConfig.from_dict({"d_model": 16, "n_layer": 1, "n_head": 4})
    with pytest.raises(ValueError, match="unknown SaShiMi preset"):
        SashimiConfig.from_preset("sashimi-huge")


def expected_parameters(config: SashimiConfig) -> int:
    """Counted from the layout: embedding, head, Mamba blocks per stage, pool Linears."""
    def block(stage):
        return sum(p.numel() for p in MambaBlock(config.block_config(stage)).parameters())

    S = len(config.pool)
    total = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2) + config.d_model  # + norm_f
    total += config.n_layer[S] * block(S)
    for s, p in enumerate(config.pool):
        d, d_next = config.width(s), config.width(s + 1)
        total += 2 * config.n_layer[s] * block(s)
        total += (d * p * d_next + d_next) + (d_next * d * p + d * p)  # DownPool, UpPool
    return total


@pytest.mark.parametrize("name,low,high", [("sashimi-sc09", 5.9e6, 6.4e6), ("sashimi-tiny", 5e4, 1.5e5)])
def test_preset_parameter_counts(name, low, high):
    config = SashimiConfig.from_preset(name)
    model = SashimiLM(config)
    count = model.num_parameters()
    print(f"{name}: {count:,} parameters")
    assert count == expected_parameters(config)
    assert low <= count <= high


def test_non_selective_stages_have_no_input_dependent_projections():
    model = SashimiLM(small_config(selective=[True, False, True]))
    names = [n for n, _ in model.named_parameters()]
    stage1 = [n for n in names if n.startswith(("down.1.", "up.1."))]
    assert stage1 and not any("x_proj" in n or "dt_proj" in n for n in stage1)
    assert any(n.startswith("down.0.") and "x_proj" in n for n in names)
    assert any(n.startswith("center.") and "x_proj" in n for n in names)


# --- forward: shapes, padding, the pooling convention ------------------------------------------

@pytest.mark.parametrize("L", [1, 5, 16, 37])
def test_forward_shapes_and_padding(seed, L):
    model = perturbed(small_config())
    ids = torch.randint(0, 32, (2, 48))
    with torch.no_grad():
        full = model(ids)
        part = model(ids[:, :L])
        hidden = model.hidden_states(ids[:, :L])
    assert full.shape == (2, 48, 32) and part.shape == (2, L, 32) and hidden.shape == (2, L, 16)
    # L not a multiple of 16 is padded at the end; by causality the prefix is unchanged.
    assert rel_err(part, full[:, :L]) < 1e-6


def reference_forward(model: SashimiLM, ids: torch.Tensor) -> torch.Tensor:
    """The U-Net written out position by position from the documented convention: coarse step k
    is W_down [x_{kp}; ...; x_{kp+p-1}] + b_down; UpPool gives vectors u_{kp+j} = j-th slice of
    W_up y_k + b_up; fine position t reads u_{t-p+1} (zero for t < p - 1)."""
    cfg = model.config

    def stage(s, x):  # x: (batch, L_s, D_s)
        if s == len(cfg.pool):
            for block in model.center:
                x = block(x)
            return x
        p, d = cfg.pool[s], cfg.width(s)
        for block in model.down[s]:
            x = block(x)
        skip = x
        down = model.down_pools[s].linear
        coarse = torch.stack([down(torch.cat([x[:, k * p + j] for j in range(p)], -1))
                              for k in range(x.shape[1] // p)], 1)
        inner = stage(s + 1, coarse)
        up = model.up_pools[s].linear
        rows = []
        for t in range(x.shape[1]):
            i = t - (p - 1)
            rows.append(torch.zeros_like(skip[:, 0]) if i < 0 else up(inner[:, i // p])[:, (i % p) * d:(i % p + 1) * d])
        x = skip + torch.stack(rows, 1)
        for block in model.up[s]:
            x = block(x)
        return x

    hidden = stage(0, model.embedding(ids).float())
    return model.lm_head(model.norm_f(hidden))


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "x".join(map(str, p)))
def test_forward_matches_position_by_position_reference(seed, pool):
    model = perturbed(small_config(pool, selective=[True, False, True][: len(pool) + 1]))
    ids = torch.randint(0, 32, (2, 2 * math.prod(pool)))
    with torch.no_grad():
        assert rel_err(model(ids), reference_forward(model, ids)) < 1e-5


# --- causality ----------------------------------------------------------------------------------

def dependence(model, L, vocab=32):
    """dep[t, s]: do the logits at position t change when ids[s] changes? (float64 model)"""
    ids = torch.randint(0, vocab, (1, L))
    with torch.no_grad():
        base = model(ids)
        dep = torch.zeros(L, L, dtype=torch.bool)
        for s in range(L):
            changed = ids.clone()
            changed[0, s] = (changed[0, s] + 1 + torch.randint(0, vocab - 1, ())) % vocab
            dep[:, s] = (model(changed) - base)[0].abs().amax(-1) > 1e-12
    return dep


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "x".join(map(str, p)))
def test_logits_at_t_depend_on_ids_up_to_t_only(seed, pool):
    model = perturbed(small_config(pool), torch.float64)
    L = 2 * math.prod(pool) + 1  # not a multiple: the padded tail is covered too
    dep = dependence(model, L)
    assert not dep.triu(1).any(), "logits depend on future ids"
    assert dep.diagonal().all()  # and the test can see a dependence when there is one


def test_shift_is_the_least_causal_one(seed):
    """Without outer blocks, position t sees ids[t] (skip) and, through the pool and the (causal)
    center, every block up to coarse step k = (t - p + 1) // p: with the p - 1 shift the last
    sample of a block already reads its own block's summary (with SaShiMi's shift of p it would
    not), and no position reads a later block."""
    p, L = 4, 16
    model = perturbed(small_config([p], n_layer=[0, 1]), torch.float64)
    dep = dependence(model, L)
    expected = torch.eye(L, dtype=torch.bool)
    for t in range(p - 1, L):
        k = (t - p + 1) // p
        expected[t, :(k + 1) * p] = True
    assert torch.equal(dep, expected)


def test_causality_check_catches_a_short_shift(seed, monkeypatch):
    """A shift of p - 2 leaks the future; the dependence check must say so."""
    model = perturbed(small_config([4]), torch.float64)
    monkeypatch.setattr(model.up_pools[0], "shift", 2)
    assert dependence(model, 12).triu(1).any()


# --- step mode and streaming -------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("batch", [1, 3])
def test_step_reproduces_forward(seed, case, batch):
    pool, selective = case
    model = perturbed(small_config(pool, selective))
    L = 2 * math.prod(pool) + 3
    ids = torch.randint(0, 32, (batch, L))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(batch)
        for t in range(L):
            logits = model.step(ids[:, t], cache)
            assert logits.shape == (batch, 32)
            assert rel_err(logits, full[:, t]) <= 1e-5, t
    assert cache.seqlen_offset == L


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "x".join(map(str, p)))
@pytest.mark.parametrize("chunks", [[5, 1, 14, 17], [1, 36], [37], [16, 16, 5]])
def test_chunked_streaming_matches_one_shot(seed, pool, chunks):
    model = perturbed(small_config(pool, selective=[False, True, True][: len(pool) + 1]))
    ids = torch.randint(0, 32, (2, sum(chunks)))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        parts, start = [], 0
        for size in chunks:
            parts.append(model(ids[:, start:start + size], cache=cache))
            start += size
        # Then step on from the streamed state.
        more = torch.randint(0, 32, (2, 6))
        stepped = torch.stack([model.step(more[:, t], cache) for t in range(6)], 1)
        full_more = model(torch.cat([ids, more], 1))[:, -6:]
    assert rel_err(torch.cat(parts, 1), full) <= 1e-5
    assert rel_err(stepped, full_more) <= 1e-5


@pytest.mark.parametrize("stack_step", ["0", "1"], ids=["per-block", "fused"])
def test_inner_stage_steps_once_every_pool_factor(seed, monkeypatch, stack_step):
    import mambaseq.models.sashimi as sashimi_module

    monkeypatch.setenv("MAMBASEQ_STACK_STEP", stack_step)
    model = perturbed(small_config([4, 2]))
    calls = []
    model.center[0].register_forward_hook(lambda *args: calls.append("forward"))
    step_blocks = sashimi_module.step_blocks

    def counting(blocks, x, states, **kwargs):
        if blocks is model.center:
            calls.append("step")
        return step_blocks(blocks, x, states, **kwargs)

    monkeypatch.setattr(sashimi_module, "step_blocks", counting)
    cache = model.allocate_cache(1)
    with torch.no_grad():
        for t in range(24):
            model.step(torch.tensor([t % 32]), cache)
    assert calls == ["step"] * 3  # after samples 8, 16 and 24


def test_cache_reset_starts_over(seed):
    model = perturbed(small_config())
    ids = torch.randint(0, 32, (2, 21))
    with torch.no_grad():
        cache = model.allocate_cache(2)
        first = model(ids, cache=cache)
        cache.reset()
        again = model(ids, cache=cache)
    assert torch.equal(first, again) and cache.seqlen_offset == 21 and cache.batch_size == 2


def test_generate_runs_on_sashimi(seed):
    model = perturbed(small_config([2, 3]))
    prompt = torch.randint(0, 32, (2, 7))
    out, logits = generate(model, prompt, 9, SamplingConfig(temperature=1.0), return_logits=True)
    assert out.shape == (2, 16) and torch.equal(out[:, :7], prompt)
    with torch.no_grad():
        full = model(out)
    assert rel_err(logits, full[:, 6:15]) <= 1e-5


# --- training-side properties -----------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_every_parameter_gets_a_gradient(seed, tied):
    model = SashimiLM(small_config(selective=[True, False, True], tie_embeddings=tied))
    # Long enough that the center's second coarse step reaches a kept position (A only acts from
    # the second step on; the last coarse step of a window only feeds positions past its end).
    ids = torch.randint(0, 32, (2, 65))
    loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, 32), ids[:, 1:].reshape(-1))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_bfloat16_forward_is_close_to_fp32(seed):
    model = perturbed(small_config())
    ids = torch.randint(0, 32, (2, 32))
    with torch.no_grad():
        ref = model(ids)
        out = model.to(torch.bfloat16)(ids)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 5e-2


# --- checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_round_trip(seed, tmp_path, tied):
    model = perturbed(small_config([2, 3], selective=[True, False, True], tie_embeddings=tied))
    save_pretrained(model, tmp_path, metadata={"task": "audio-lm", "sample_rate": 16000})
    document = read_model_dir(tmp_path)
    assert document["architecture"] == "SashimiLM" and document["config"] == model.config
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is SashimiLM and loaded.config == model.config
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    ids = torch.randint(0, 32, (2, 13))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_pretrained(SashimiLM(small_config()), tmp_path / "sashimi")
    with pytest.raises(CheckpointError, match="SashimiConfig, not the MambaConfig"):
        load_weights(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=32)), tmp_path / "sashimi")
    with pytest.raises(CheckpointError, match="config does not match"):
        load_weights(SashimiLM(small_config(pool=[2, 3])), tmp_path / "sashimi")


@pytest.mark.parametrize("tied", [False, True])
def test_describe_model_dir_counts_sashimi_parameters(tmp_path, tied):
    from mambaseq.checkpoint import describe_model_dir

    model = SashimiLM(small_config(tie_embeddings=tied))
    save_pretrained(model, tmp_path)
    report = describe_model_dir(tmp_path)
    assert report["architecture"] == "SashimiLM" and report["parameters"] == model.num_parameters()
    assert report["model"]["pool"] == [4, 4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("selective", [True, False, [True, False, True]], ids=["S", "N", "SNS"])
def test_sc09_preset_on_cuda_steps_like_forward_and_matches_cpu(seed, selective):
    model = perturbed(SashimiConfig.from_preset("sashimi-sc09", selective=selective))
    ids = torch.randint(0, 256, (2, 512))
    with torch.no_grad():
        cpu = model(ids)
        model.cuda()
        ids = ids.cuda()
        full = model(ids)
        cache = model.allocate_cache(2)
        model(ids[:, :100], cache=cache)
        stepped = torch.stack([model.step(ids[:, t], cache) for t in range(100, 140)], 1)
    assert rel_err(full.cpu(), cpu) < 1e-4
    assert rel_err(stepped, full[:, 100:140]) < 1e-5
