"""Non-finite losses and gradients: stop naming the step (default) or skip the step; never save NaN."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mambaseq.training.checkpoint_io import AtomicCheckpointIO
from mambaseq.training.classify_module import ClassifierModule
from mambaseq.training.guards import NonFiniteError, NonFiniteGuard
from mambaseq.training.lm_module import CausalLMModule
from mambaseq.training.trainer import TrainRecipe


def nan_loss_at(base: type, steps: set[int]) -> type:
    """`base` whose training loss is NaN at the given (0-based) steps."""

    class NanLoss(base):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.nan if self.trainer.global_step in steps else loss

    return NanLoss


def finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


@pytest.mark.parametrize("base", [CausalLMModule, ClassifierModule])
def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path, tiny, base):
    with pytest.raises(NonFiniteError, match="at step 3: the loss is nan"):
        tiny(tmp_path, nan_loss_at(base, {3}))
    last = AtomicCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    # The checkpoint of step 2 stays the newest, and holds finite weights.
    assert last["global_step"] == 2 and finite(last["state_dict"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]


def test_an_inf_gradient_with_a_finite_loss_stops_the_run(tmp_path, tiny):
    class InfGradient(CausalLMModule):
        def on_after_backward(self):
            if self.trainer.global_step == 3:
                next(self.parameters()).grad[0] = math.inf

    with pytest.raises(NonFiniteError, match=r"at step 3: the gradient norm is inf \(loss [0-9.]+\)"):
        tiny(tmp_path, InfGradient)
    assert AtomicCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_skip_mode_finishes_with_finite_weights_and_logs_the_skips(tmp_path, tiny):
    trainer, module = tiny(tmp_path, nan_loss_at(CausalLMModule, {2, 4}), on_nonfinite="skip")
    assert trainer.global_step == 6 and finite(module.state_dict())
    assert trainer.callback_metrics["train/skipped_steps"] == 2


def test_a_skipped_step_changes_neither_weights_nor_optimizer_state(tmp_path, tiny):
    seen = {}

    class Recorded(nan_loss_at(CausalLMModule, {3})):
        def on_train_batch_start(self, batch, batch_idx):
            seen[self.trainer.global_step] = self._state()

        def _state(self):
            optimizer = self.trainer.optimizers[0]
            moments = [s["exp_avg"].clone() for s in optimizer.state.values()]
            return [p.detach().clone() for p in self.parameters()] + moments

    tiny(tmp_path, Recorded, on_nonfinite="skip")
    # The state entering step 4 is the one entering step 3; step 2 did change it (the check can fail).
    assert all(torch.equal(a, b) for a, b in zip(seen[3], seen[4], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(seen[2], seen[3], strict=True))


def test_too_many_consecutive_skips_stop_the_run(tmp_path, tiny):
    with pytest.raises(NonFiniteError, match="at step 21: 20 steps in a row"):
        tiny(tmp_path, nan_loss_at(CausalLMModule, set(range(2, 30))), on_nonfinite="skip", max_steps=30,
             checkpoint_every=100)


def test_a_checkpoint_of_nonfinite_weights_is_refused():
    checkpoint = {"state_dict": {"w": torch.tensor([1.0, math.nan]), "steps": torch.tensor([3])}}
    with pytest.raises(NonFiniteError, match="at step 5: the weights are not finite"):
        NonFiniteGuard().on_save_checkpoint(SimpleNamespace(global_step=5), None, checkpoint)


def test_an_unknown_on_nonfinite_is_bad_input(tmp_path):
    with pytest.raises(ValueError, match="on_nonfinite must be one of stop, skip, got 'ignore'"):
        TrainRecipe(out=str(tmp_path), on_nonfinite="ignore").fit(None, None, None, 1, "loss")
    assert not any(tmp_path.iterdir())
