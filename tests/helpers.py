"""Shared test helpers (importable as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; infinite when out holds a NaN or inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter's gradient of `model`, flattened into one vector (to compare two backward passes)."""
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def mean_nll_grads(module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """`flat_grads` of a causal LM module's mean next-token loss on `batch` (its `_nll`)."""
    nll, tokens = module._nll(batch)
    (nll / tokens).backward()
    return flat_grads(module.model)


def script_validation(monkeypatch: pytest.MonkeyPatch, module_cls: type, metric: str,
                      script: dict[int, float]) -> None:
    """Make `module_cls`'s validation report `script[step]` as `metric` in place of its own figure, so a
    test knows in advance which validation is the best."""
    original = module_cls.on_validation_epoch_end

    def scripted(self) -> None:
        log = self.log
        self.log = lambda name, value, **kwargs: log(
            name, script[self.trainer.global_step] if name == metric else value, **kwargs)
        try:
            original(self)
        finally:
            del self.log

    monkeypatch.setattr(module_cls, "on_validation_epoch_end", scripted)


def exports_checkpoint(model_dir: str | Path, checkpoint: str | Path) -> bool:
    """Whether the weights in `model_dir` are exactly the module weights of a Lightning checkpoint."""
    from safetensors.torch import load_file

    from mambaseq.training.checkpoint_io import AtomicCheckpointIO

    exported = load_file(Path(model_dir) / "model.safetensors")
    saved = AtomicCheckpointIO().load_checkpoint(checkpoint)["state_dict"]
    return all(torch.equal(value, saved[f"model.{name}"]) for name, value in exported.items())
