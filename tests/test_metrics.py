"""Classification report: figures against hand counts, and the files written."""

from __future__ import annotations

import json

import pytest
import torch

from mambaseq.metrics import classification_report, write_report


def test_hand_counted_example():
    labels = torch.tensor([0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0])
    report = classification_report(labels, predicted, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2, 2))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # never predicted
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


@pytest.mark.parametrize("classes", [2, 5])
def test_random_labels_against_a_counting_loop(seed, classes):
    labels = torch.randint(classes, (200,))
    predicted = torch.randint(classes, (200,))
    report = classification_report(labels, predicted, [f"k{i}" for i in range(classes)])
    for i in range(classes):
        true_pos = sum(int(p == i and t == i) for p, t in zip(predicted, labels, strict=True))
        precision = true_pos / max(1, int((predicted == i).sum()))
        recall = true_pos / max(1, int((labels == i).sum()))
        assert report["per_class"][f"k{i}"]["precision"] == pytest.approx(precision)
        assert report["per_class"][f"k{i}"]["recall"] == pytest.approx(recall)
        for j in range(classes):
            assert report["confusion_matrix"][i][j] == int(((labels == i) & (predicted == j)).sum())
    assert report["accuracy"] == pytest.approx(float((labels == predicted).float().mean()))


def test_write_report_makes_json_and_png(tmp_path):
    report = classification_report(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), ["x", "y"])
    paths = write_report(report, tmp_path / "r")
    assert json.loads(paths[0].read_text())["accuracy"] == pytest.approx(2 / 3)
    assert json.loads(paths[1].read_text())["matrix"] == [[1, 0], [1, 1]]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(p.name for p in paths)
