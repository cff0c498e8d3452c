"""Classification figures: accuracy, per-class precision/recall/F1, confusion matrix (JSON and PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from .fileio import atomic_write


def classification_report(labels: torch.Tensor, predicted: torch.Tensor, classes: list[str]) -> dict:
    """labels, predicted: (n,) class indices -> accuracy, per-class figures and the confusion matrix
    (rows: true class, columns: predicted class). A class never predicted has precision 0."""
    matrix = multiclass_confusion_matrix(predicted.long().cpu(), labels.long().cpu(), num_classes=len(classes))
    matrix = matrix.double()
    true_pos = matrix.diagonal()
    support, predicted_count = matrix.sum(1), matrix.sum(0)
    precision = true_pos / predicted_count.clamp(min=1)
    recall = true_pos / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    per_class = {name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                        "support": int(support[i])} for i, name in enumerate(classes)}
    present = support > 0
    return {"accuracy": (true_pos.sum() / matrix.sum().clamp(min=1)).item(), "windows": int(matrix.sum()),
            "macro_f1": f1[present].mean().item() if present.any() else 0.0, "per_class": per_class,
            "classes": list(classes), "confusion_matrix": matrix.long().tolist()}


def write_report(report: dict, folder: str | Path) -> list[Path]:
    """metrics.json, confusion_matrix.json and confusion_matrix.png in `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "metrics.json", folder / "confusion_matrix.json", folder / "confusion_matrix.png"]
    atomic_write(paths[0], lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    matrix = {"classes": report["classes"], "rows": "true class", "columns": "predicted class",
              "matrix": report["confusion_matrix"]}
    atomic_write(paths[1], lambda tmp: Path(tmp).write_text(json.dumps(matrix, indent=2) + "\n"))
    atomic_write(paths[2], lambda tmp: plot_confusion(report, tmp))
    return paths


def plot_confusion(report: dict, path: str | Path) -> None:
    """The confusion matrix as a PNG: counts in the cells, shaded by the fraction of each true class."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    counts = torch.tensor(report["confusion_matrix"], dtype=torch.float64)
    shares = counts / counts.sum(1, keepdim=True).clamp(min=1)
    classes = report["classes"]
    size = 1.6 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report['accuracy']:.3f} ({report['windows']} windows)")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
