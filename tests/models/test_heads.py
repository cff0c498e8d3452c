from __future__ import annotations

import pytest
import torch

from mambaseq.models import HEAD_NORMS, POOLINGS, ClassificationHead, pool


def _expected(hidden, how, mask):
    """Per-row loops: the obvious definition of each pooling over the counted positions."""
    rows = []
    for b in range(hidden.shape[0]):
        kept = hidden[b][mask[b]]
        if how == "mean":
            rows.append(kept.mean(0))
        elif how == "max":
            rows.append(kept.max(0).values)
        elif how == "first":
            rows.append(kept[0])
        else:
            rows.append(kept[-1])
    return torch.stack(rows)


def _mask(lengths, L, padding_at):
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if padding_at == "end":
            mask[b, :n] = True
        else:
            mask[b, L - n:] = True
    return mask


@pytest.mark.parametrize("how", POOLINGS)
@pytest.mark.parametrize(("batch", "L", "d"), [(1, 1, 3), (3, 7, 5), (4, 16, 8)])
def test_pool_without_mask(how, batch, L, d):
    hidden = torch.randn(batch, L, d)
    got = pool(hidden, how)
    assert got.shape == (batch, d)
    torch.testing.assert_close(got, _expected(hidden, how, torch.ones(batch, L, dtype=torch.bool)))


def test_pool_without_mask_by_hand():
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [-5.0, 0.5]]])
    torch.testing.assert_close(pool(hidden, "mean"), torch.tensor([[-1.0 / 3.0, 2.5 / 3.0]]))
    torch.testing.assert_close(pool(hidden, "max"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool(hidden, "first"), torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(pool(hidden, "last"), torch.tensor([[-5.0, 0.5]]))


def test_pool_default_is_mean():
    hidden = torch.randn(2, 5, 3)
    torch.testing.assert_close(pool(hidden), hidden.mean(1))


@pytest.mark.parametrize("how", POOLINGS)
@pytest.mark.parametrize("padding_at", ["end", "start"])
def test_pool_with_mask(how, padding_at):
    L, d = 9, 4
    lengths = [9, 1, 4, 6]
    hidden = torch.randn(len(lengths), L, d)
    mask = _mask(lengths, L, padding_at)
    torch.testing.assert_close(pool(hidden, how, mask), _expected(hidden, how, mask))


@pytest.mark.parametrize("how", POOLINGS)
def test_pool_ignores_values_at_masked_positions(how):
    L, d = 8, 3
    mask = _mask([5, 2, 8], L, "end")
    hidden = torch.randn(3, L, d)
    other = hidden.clone()
    other[~mask] = torch.randn(int((~mask).sum()), d) * 1e3
    torch.testing.assert_close(pool(hidden, how, mask), pool(other, how, mask))


def test_pool_with_mask_by_hand():
    hidden = torch.tensor([
        [[1.0], [2.0], [9.0], [7.0]],   # padding at the end: counts 1, 2
        [[8.0], [3.0], [-1.0], [6.0]],  # padding at the start: counts 3, -1, 6
    ])
    mask = torch.tensor([[True, True, False, False], [False, True, True, True]])
    torch.testing.assert_close(pool(hidden, "mean", mask), torch.tensor([[1.5], [8.0 / 3.0]]))
    torch.testing.assert_close(pool(hidden, "max", mask), torch.tensor([[2.0], [6.0]]))
    torch.testing.assert_close(pool(hidden, "first", mask), torch.tensor([[1.0], [3.0]]))
    torch.testing.assert_close(pool(hidden, "last", mask), torch.tensor([[2.0], [6.0]]))


@pytest.mark.parametrize("how", POOLINGS)
def test_pool_accepts_integer_mask(how):
    hidden = torch.randn(2, 6, 3)
    mask = _mask([3, 5], 6, "start")
    torch.testing.assert_close(pool(hidden, how, mask.long()), pool(hidden, how, mask))


def test_pool_bad_name_raises():
    with pytest.raises(ValueError, match="median"):
        pool(torch.randn(2, 3, 4), "median")


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize(("batch", "L", "d_model", "num_classes"), [(1, 1, 8, 2), (3, 10, 16, 5)])
def test_classification_head_shape(pooling, batch, L, d_model, num_classes):
    head = ClassificationHead(d_model, num_classes, pooling=pooling)
    hidden = torch.randn(batch, L, d_model)
    assert head(hidden).shape == (batch, num_classes)
    mask = torch.ones(batch, L, dtype=torch.bool)
    mask[:, L // 2 + 1:] = False
    assert head(hidden, mask).shape == (batch, num_classes)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_classification_head_is_projection_of_pool(pooling):
    head = ClassificationHead(6, 3, pooling=pooling, norm="none").eval()
    hidden = torch.randn(4, 7, 6)
    mask = _mask([7, 3, 1, 5], 7, "end")
    torch.testing.assert_close(head(hidden, mask), head.proj(pool(hidden, pooling, mask)))


def test_classification_head_bad_pooling_raises():
    with pytest.raises(ValueError, match="median"):
        ClassificationHead(8, 2, pooling="median")


@pytest.mark.parametrize("how", POOLINGS)
def test_row_without_counted_positions_pools_to_zeros(how):
    hidden = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out = pool(hidden, how, mask)
    assert torch.equal(out[1], torch.zeros(4))
    assert torch.equal(out[0], pool(hidden[:1], how)[0])


def test_head_pools_and_projects_in_fp32_under_autocast():
    from mambaseq.models import ClassificationHead

    head = ClassificationHead(8, 3, norm="none")
    hidden = torch.randn(2, 50, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(hidden)
    want = hidden.float().mean(1) @ head.proj.weight.T + head.proj.bias
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, want)


def _standardized(pooled, mean, var, eps=1e-8):
    return (pooled - mean) / torch.sqrt(var + eps)


@pytest.mark.parametrize(("batch", "d"), [(2, 3), (5, 8)])
def test_batch_norm_head_standardizes_over_the_batch_in_training(batch, d):
    head = ClassificationHead(d, 4, norm="batch").train()
    # Windows that differ by about 1e-3 around a common 3: the standardized features are unit-sized.
    # Rows are kept apart (row index + noise) so that no feature's spread falls to fp32's resolution
    # at 3 (2.4e-7), where the head's fp32 arithmetic could not be held to 1e-3; and the inputs are
    # rounded to fp32 first, so both sides standardize the same numbers.
    rows = torch.arange(batch, dtype=torch.float64)[:, None, None]
    spread = rows + 0.3 * torch.randn(batch, 6, d, dtype=torch.float64)
    hidden = (3 + 1e-3 * spread).float().double()
    pooled = hidden.mean(1)
    want = _standardized(pooled, pooled.mean(0), pooled.var(0, unbiased=False)).float()
    assert want.abs().max() > 0.5
    torch.testing.assert_close(head(hidden.float()), head.proj(want), rtol=1e-3, atol=1e-3)


def test_batch_norm_head_uses_running_statistics_in_eval():
    head = ClassificationHead(4, 3, norm="batch", pooling="first")
    mean, var = torch.zeros(4), torch.ones(4)
    for _ in range(3):  # BatchNorm's update: momentum 0.1, unbiased batch variance
        hidden = 5 + 2 * torch.randn(6, 2, 4)
        head.train()(hidden)
        mean = 0.9 * mean + 0.1 * hidden[:, 0].mean(0)
        var = 0.9 * var + 0.1 * hidden[:, 0].var(0, unbiased=True)
    hidden = torch.randn(3, 2, 4)
    with torch.no_grad():
        got = head.eval()(hidden)
    torch.testing.assert_close(got, head.proj(_standardized(hidden[:, 0], mean, var)))


def test_batch_norm_head_trains_on_a_batch_of_one():
    head = ClassificationHead(4, 2, norm="batch", pooling="first").train()
    head.norm.running_mean.fill_(1.0)
    head.norm.running_var.fill_(4.0)
    hidden = torch.tensor([[[3.0, 1.0, -1.0, 1.0]]])
    mean = 0.9 * torch.ones(4) + 0.1 * hidden[0, 0]
    var = 0.9 * 4.0 + 0.1 * (hidden[0, 0] - mean) ** 2
    got = head(hidden)
    torch.testing.assert_close(head.norm.running_mean, mean)
    torch.testing.assert_close(head.norm.running_var, var)
    torch.testing.assert_close(got, head.proj(_standardized(hidden[:, 0], mean, var)))
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("norm", HEAD_NORMS)
def test_head_output_is_fp32_under_autocast(norm):
    head = ClassificationHead(8, 3, norm=norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(3, 20, 8).to(torch.bfloat16)).dtype == torch.float32


def test_classification_head_bad_norm_raises():
    with pytest.raises(ValueError, match="layer"):
        ClassificationHead(8, 2, norm="layer")
