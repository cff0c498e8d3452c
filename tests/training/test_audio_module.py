"""The audio Lightning module: masked next-sample loss, validation over all windows, both architectures."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers import flat_grads, rel_err
from torch.utils.data import DataLoader

from mambaseq import MambaConfig
from mambaseq.models import SashimiConfig
from mambaseq.training.audio_module import AudioLMModule, masked_nll
from mambaseq.training.data import EvenSplit

CONFIGS = {
    "SashimiLM": SashimiConfig(d_model=8, n_layer=1, pool=[2, 2], vocab_size=16).to_dict(),
    "MambaLM": MambaConfig(d_model=16, n_layer=2, vocab_size=16).to_dict(),
}
REAL = [33, 20, 5]  # real samples per window (of 33); the rest is padding


def windows(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (3, 33) of 16 classes and a mask of REAL leading samples per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (len(REAL), 33), generator=g)
    mask = torch.arange(33) < torch.tensor(REAL)[:, None]
    return ids, mask


def by_hand(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed NLL and count, running every window on its real samples alone (no padding in sight)."""
    total, count = 0.0, 0
    for row in range(len(ids)):
        real = ids[row, : int(mask[row].sum())]
        with torch.no_grad():
            logp = torch.log_softmax(model(real[None, :-1])[0, :, :16].double(), dim=-1)
        total -= sum(logp[t, real[t + 1]].item() for t in range(len(real) - 1))
        count += len(real) - 1
    return total, count


@pytest.mark.parametrize("architecture", CONFIGS)
def test_masked_loss_equals_the_loss_of_the_real_samples_alone(architecture, seed):
    module = AudioLMModule(architecture, CONFIGS[architecture])
    ids, mask = windows(seed)
    with torch.no_grad():
        nll, count = masked_nll(module.model, ids, mask)
    want, want_count = by_hand(module.model, ids, mask)
    assert count == want_count == sum(n - 1 for n in REAL)
    assert nll.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("architecture", CONFIGS)
def test_padding_values_do_not_change_the_loss(architecture, seed):
    module = AudioLMModule(architecture, CONFIGS[architecture])
    ids, mask = windows(seed)
    scrambled = torch.where(mask, ids, torch.randint(0, 16, ids.shape))
    assert not torch.equal(scrambled, ids)
    with torch.no_grad():
        assert masked_nll(module.model, scrambled, mask)[0].item() == pytest.approx(
            masked_nll(module.model, ids, mask)[0].item(), rel=1e-6)


def test_validation_is_summed_nll_over_summed_samples_not_a_mean_of_batch_means(seed):
    module = AudioLMModule("SashimiLM", CONFIGS["SashimiLM"])
    ids, mask = windows(seed)
    items = EvenSplit(list(zip(ids, mask, strict=True)), rank=0, world=1)  # (window, keep) as in training
    # Batches of 2 and 1 windows with 52 and 4 counted samples: a mean of batch means would weigh the
    # 4 samples of the last batch as much as the other 52.
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, DataLoader(items, batch_size=2), verbose=False)[0]
    total, count = by_hand(module.model, ids, mask)
    assert metrics["val/bits_per_sample"] == pytest.approx(total / count / math.log(2), rel=1e-5)


def test_activation_checkpointing_of_a_unet_gives_the_same_gradients(seed):
    plain = AudioLMModule("SashimiLM", CONFIGS["SashimiLM"])
    checkpointed = AudioLMModule("SashimiLM", CONFIGS["SashimiLM"], checkpoint_activations=True)
    checkpointed.model.load_state_dict(plain.model.state_dict())
    ids, mask = windows(seed)
    grads = []
    for module in (plain, checkpointed):
        nll, count = masked_nll(module.model, ids, mask)
        (nll / count).backward()
        grads.append(flat_grads(module.model))
    assert rel_err(grads[1], grads[0]) < 1e-6


@pytest.mark.parametrize("architecture", ["SashimiLM", "MambaLM"])
def test_chunked_training_gives_the_same_loss_and_gradients(seed, architecture):
    # Windows of 32 predictions in chunks of 7 samples, padding masked: the same summed NLL and
    # gradients as the whole batch.
    plain = AudioLMModule(architecture, CONFIGS[architecture])
    chunked = AudioLMModule(architecture, CONFIGS[architecture], chunk_tokens=7)
    chunked.model.load_state_dict(plain.model.state_dict())
    ids, mask = windows(seed)
    losses, grads = [], []
    for module in (plain, chunked):
        nll, count = module._train_nll(ids, mask)
        (nll / count).backward()
        losses.append(nll.detach())
        grads.append(flat_grads(module.model))
    assert rel_err(losses[1], losses[0]) < 1e-6
    assert rel_err(grads[1], grads[0]) < 1e-5


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown audio architecture"):
        AudioLMModule("MambaClassifier", CONFIGS["MambaLM"])
