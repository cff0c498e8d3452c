"""On a CUDA device the model runs (through whatever backend dispatch picks) and matches the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import flat_grads, rel_err

from mambaseq import MambaConfig, MambaLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_forward_and_gradients_match_cpu(seed):
    model = MambaLM(MambaConfig.from_preset("dna-1.4m"))
    ids = torch.randint(0, 12, (2, 2048))
    losses, grads = [], []
    for device in ("cpu", "cuda"):
        model.zero_grad()
        model.to(device)
        logits = model(ids[:, :-1].to(device))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten().to(device))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten().cpu() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert rel_err(grads[1], grads[0]) < 1e-4


def test_step_matches_forward(seed):
    model = MambaLM(MambaConfig.from_preset("dna-1.4m")).cuda().eval()
    ids = torch.randint(0, 12, (4, 64), device="cuda")
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(4)
        model(ids[:, :8], cache=cache)
        for t in range(8, 64):
            assert rel_err(model.step(ids[:, t], cache), full[:, t]) <= 1e-5


@pytest.mark.parametrize("L", [1000, 8192])
def test_triton_model_matches_reference_model(seed, monkeypatch, L):
    # The same model on CUDA through the Triton scan (auto) and through the reference ops.
    model = MambaLM(MambaConfig.from_preset("dna-1.4m")).cuda()
    ids = torch.randint(0, 12, (2, L + 1), device="cuda")
    results = {}
    for backend in ("auto", "reference"):
        monkeypatch.setenv("MAMBASEQ_KERNELS", backend)
        model.zero_grad()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        results[backend] = (logits.detach(), loss.item(),
                            flat_grads(model))
    assert rel_err(results["auto"][0], results["reference"][0]) < 1e-5
    assert results["auto"][1] == pytest.approx(results["reference"][1], rel=1e-5)
    assert rel_err(results["auto"][2], results["reference"][2]) < 1e-4
