"""The exported weights are those of the best validation (a tie: the later step), through early
stopping and through a crash and --resume; with export_best off, the last ones.

The validation metric is scripted per step (`scripted`), so which step is best is known in advance;
every validation keeps a copy of the weights it saw, to compare the returned module against.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from mambaseq.training.checkpoint_io import AtomicCheckpointIO
from mambaseq.training.lm_module import CausalLMModule
from mambaseq.training.trainer import BestCheckpoint, TrainRecipe

METRIC = "val/scripted"


def scripted(script: dict[int, float]) -> type[CausalLMModule]:
    """An LM module whose validation also reports `script[step]` as METRIC and keeps (in the class's
    `seen`, across runs) the weights each step's validation saw."""

    class Scripted(CausalLMModule):
        seen: ClassVar[dict[int, dict[str, torch.Tensor]]] = {}

        def on_validation_epoch_end(self) -> None:
            super().on_validation_epoch_end()
            step = self.trainer.global_step
            self.seen[step] = {name: value.detach().clone() for name, value in self.state_dict().items()}
            self.log(METRIC, script[step])

    return Scripted


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def best_state(checkpoint: dict) -> dict:
    """BestCheckpoint's state in a Lightning checkpoint."""
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith(BestCheckpoint.__qualname__)]
    return state


@pytest.mark.parametrize(("script", "mode", "best"), [
    ({1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5}, "min", 2),
    ({1: 0.25, 2: 0.75, 3: 0.5, 4: 0.625}, "max", 2),
    ({1: 3.0, 2: 1.0, 3: 1.0, 4: 2.0}, "min", 3),  # a tie: the later step
    ({1: 2.0, 2: math.nan, 3: 3.0, 4: 4.0}, "min", 1),  # NaN is never the best
    ({1: 3.0, 2: 2.0, 3: 1.5, 4: 1.0}, "min", 4),  # the last is the best: as without export_best
], ids=["min", "max", "tie", "nan", "last"])
def test_the_module_ends_with_the_weights_of_the_best_validation(tmp_path, tiny_fitted, script, mode, best):
    module_cls = scripted(script)
    fitted, module = tiny_fitted(tmp_path, module_cls, metric=(METRIC, mode), max_steps=4, val_every=1)
    assert (fitted.trainer.global_step, fitted.step, fitted.metric) == (4, best, script[best])
    assert same(module.state_dict(), module_cls.seen[best])
    assert best == 4 or not same(module.state_dict(), module_cls.seen[4])  # training went on after the best
    assert fitted.metadata() == ({"steps": 4} if best == 4 else {"steps": best, "trained_steps": 4})
    assert AtomicCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == best


def test_without_export_best_the_last_weights_stay(tmp_path, tiny_fitted):
    module_cls = scripted({1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5})
    fitted, module = tiny_fitted(tmp_path, module_cls, metric=(METRIC, "min"), max_steps=4, val_every=1,
                                 export_best=False)
    assert (fitted.step, fitted.metric) == (4, 2.5) and same(module.state_dict(), module_cls.seen[4])
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()


# Improvements at steps 2 and 6; step 4 ties step 2 (no improvement for early stopping, but the later
# of equal weights is the one exported).
STOPPING = {1: 3.0, 2: 1.0, 3: 2.0, 4: 1.0, 5: 1.5, 6: 0.5, 7: 0.6, 8: 0.7, 9: 0.8, 10: 0.9, 11: 1.0, 12: 1.1}


@pytest.mark.parametrize(("patience", "stop", "exported"), [(1, 3, 2), (2, 4, 4), (3, 5, 4), (4, 10, 6),
                                                             (None, 12, 6)])
def test_early_stopping_after_patience_validations_without_improvement(tmp_path, tiny_fitted, patience, stop,
                                                                       exported):
    module_cls = scripted(STOPPING)
    fitted, module = tiny_fitted(tmp_path, module_cls, metric=(METRIC, "min"), max_steps=12, val_every=1,
                                 early_stop_patience=patience)
    assert (fitted.trainer.global_step, fitted.step, fitted.metric) == (stop, exported, STOPPING[exported])
    assert same(module.state_dict(), module_cls.seen[exported])


@pytest.mark.parametrize("patience", [0, -1, 1.5, True, "3"])
def test_a_bad_patience_is_bad_input(tmp_path, patience):
    # The wrong type stops the recipe's construction, a wrong integer the run.
    with pytest.raises(ValueError, match=r"early_stop_patience must be (a positive integer|an integer or null)"):
        TrainRecipe(out=str(tmp_path), early_stop_patience=patience).fit(None, None, None, 1, METRIC)


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_the_best_survives_a_crash_and_resume(tmp_path, tiny_fitted, checkpoint_every):
    # Best at step 2; the crash comes after the validation of step 3 (reading ahead step 4's batch; step 3 is
    # not checkpointed with checkpoint_every 2, so replayed): the resumed run must not take a later step.
    script = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 3.0, 6: 4.0}
    fields = dict(metric=(METRIC, "min"), val_every=1, checkpoint_every=checkpoint_every)
    straight_cls = scripted(script)
    straight, straight_module = tiny_fitted(tmp_path / "straight", straight_cls, **fields)
    assert straight.step == 2

    module_cls = scripted(script)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fitted(tmp_path / "run", module_cls, crash_at=4, **fields)
    last = AtomicCheckpointIO().load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # A step that is validated is checkpointed after its validation: last.ckpt knows the best so far.
    assert (last["global_step"], best_state(last)["best_step"]) == ({1: 3, 2: 2}[checkpoint_every], 2)
    fitted, module = tiny_fitted(tmp_path / "run", module_cls, resume=True, **fields)
    assert (fitted.trainer.global_step, fitted.step, fitted.metric) == (6, 2, 1.0)
    assert same(module.state_dict(), straight_module.state_dict())


def test_a_best_found_after_the_last_checkpoint_stays_when_the_replay_does_not_find_it(tmp_path, tiny_fitted):
    # The crashed run found its best at step 3, after the checkpoint of step 2. A replay that is not
    # bit-exact (GPUs) can score step 3 worse: best.ckpt still holds validated weights, so they stay the
    # best, with their own step and score, not those last.ckpt last knew (step 2, 2.0).
    fields = dict(metric=(METRIC, "min"), val_every=1, checkpoint_every=2)
    crashed_cls = scripted({1: 3.0, 2: 2.0, 3: 1.0})
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fitted(tmp_path, crashed_cls, crash_at=4, **fields)
    replay_cls = scripted({3: 5.0, 4: 4.0, 5: 3.0, 6: 2.5})
    fitted, module = tiny_fitted(tmp_path, replay_cls, resume=True, **fields)
    assert (fitted.step, fitted.metric) == (3, 1.0)
    assert same(module.state_dict(), crashed_cls.seen[3])


def test_a_resume_without_best_ckpt_warns_and_keeps_the_best_from_there_on(tmp_path, tiny_fitted):
    module_cls = scripted({1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 3.0, 6: 4.0})
    fields = dict(metric=(METRIC, "min"), val_every=1, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fitted(tmp_path, module_cls, crash_at=4, **fields)
    (tmp_path / "checkpoints" / "best.ckpt").unlink()
    with pytest.warns(UserWarning, match="best.ckpt is gone"):
        fitted, module = tiny_fitted(tmp_path, module_cls, resume=True, **fields)
    # Resumed from step 2: the best of steps 3 to 6.
    assert (fitted.step, fitted.metric) == (3, 2.0) and same(module.state_dict(), module_cls.seen[3])
