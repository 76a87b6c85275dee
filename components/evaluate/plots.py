"""Report figures as PNG data URIs (matplotlib's Agg renderer, no pyplot, no display).

Each function takes numbers and returns "data:image/png;base64,..." for an <img>.
Figures are `matplotlib.figure.Figure` objects, so no global pyplot state is
touched and nothing needs a GUI backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kfp_automl.components._html import DPI
from kfp_automl.components._html import png as _png

MAX_CURVES = 10  # one-vs-rest curves drawn for at most this many classes


def _figure(width: float = 5.5, height: float = 4.0, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _one_vs_rest(y, proba, classes) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, truth as 0/1, score) per curve: the positive class, or each class (capped)."""
    y = np.asarray(y)
    if len(classes) == 2:
        return [(str(classes[1]), (y == classes[1]).astype(int), proba[:, 1])]
    return [
        (str(c), (y == c).astype(int), proba[:, i])
        for i, c in enumerate(classes[:MAX_CURVES])
        if 0 < np.sum(y == c) < len(y)
    ]


def roc_curves(y, proba: np.ndarray, classes: Sequence) -> str:
    from sklearn.metrics import auc, roc_curve

    fig, ax = _figure()
    for label, truth, score in _one_vs_rest(y, proba, classes):
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC curve" + (" (one vs rest)" if len(classes) > 2 else ""))
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def pr_curves(y, proba: np.ndarray, classes: Sequence) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _figure()
    for label, truth, score in _one_vs_rest(y, proba, classes):
        precision, recall, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        line = ax.step(recall, precision, where="post", label=f"{label} (AP {ap:.3f})")
        ax.axhline(truth.mean(), linestyle=":", linewidth=1, color=line[0].get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("Precision-recall curve (dotted: class share)")
    ax.legend(loc="lower left", fontsize="small")
    return _png(fig)


def calibration_curves(y, proba: np.ndarray, classes: Sequence, n_bins: int = 10) -> str:
    from sklearn.calibration import calibration_curve

    fig, ax = _figure()
    for label, truth, score in _one_vs_rest(y, proba, classes):
        bins = max(2, min(n_bins, len(truth) // 20))
        frac, mean_pred = calibration_curve(truth, score, n_bins=bins, strategy="quantile")
        ax.plot(mean_pred, frac, marker="o", markersize=3, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed share", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Calibration (quantile bins)")
    ax.legend(loc="upper left", fontsize="small")
    return _png(fig)


def confusion_heatmap(matrix: Sequence[Sequence[int]], labels: Sequence) -> str:
    cm = np.asarray(matrix, dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # colour: share of the actual class
    k = len(labels)
    size = min(9.0, 3.0 + 0.45 * k)
    fig, ax = _figure(size + 1, size)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the actual class")
    names = [str(c) for c in labels]
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="actual")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.6 else "black"
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=colour)
    ax.set_title("Confusion matrix (counts)")
    return _png(fig)


def residual_plots(y, pred) -> str:
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    residual = y - pred
    fig, (left, right) = _figure(10, 4, ncols=2)
    left.scatter(pred, residual, s=8, alpha=0.5)
    left.axhline(0, color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="predicted", ylabel="residual (true - predicted)")
    left.set_title("Residual vs predicted")
    right.hist(residual, bins=min(50, max(10, len(residual) // 10)))
    right.axvline(0, color="grey", linestyle="--", linewidth=1)
    right.set(xlabel="residual (true - predicted)", ylabel="rows")
    right.set_title("Residual distribution")
    return _png(fig)


def learning_curve(sizes, train_mean, train_std, cv_mean, cv_std, metric: str) -> str:
    fig, ax = _figure()
    sizes = np.asarray(sizes)
    for label, mean, std in (
        ("training rows", train_mean, train_std),
        ("held-out fold", cv_mean, cv_std),
    ):
        mean, std = np.asarray(mean), np.asarray(std)
        line = ax.plot(sizes, mean, marker="o", label=label)
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.2, color=line[0].get_color())
    ax.set(xlabel="training rows", ylabel=metric)
    ax.set_title(f"Learning curve ({metric}, 3-fold CV, band: +/- 1 sd)")
    ax.legend(fontsize="small")
    return _png(fig)


def importance_bars(features: Sequence[str], mean, std, metric: str, top: int = 15) -> str:
    features, mean, std = list(features)[:top], list(mean)[:top], list(std)[:top]
    fig, ax = _figure(6.5, max(2.5, 0.35 * len(features) + 1.2))
    pos = np.arange(len(features))[::-1]
    ax.barh(pos, mean, xerr=std, color="#4c72b0")
    ax.set_yticks(pos, features)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_xlabel(f"loss in {metric} when the column is shuffled")
    ax.set_title("Permutation importance on the holdout")
    return _png(fig)


def partial_dependence(
    feature: str, kind: str, grid: Sequence, outputs: Sequence[str], average
) -> str:
    fig, ax = _figure()
    average = np.asarray(average)
    if kind == "categorical":
        names = [str(g) for g in grid]
        pos = np.arange(len(names))
        width = 0.8 / len(outputs)
        for i, label in enumerate(outputs):
            ax.bar(pos + i * width - 0.4 + width / 2, average[i], width, label=label)
        ax.set_xticks(pos, names, rotation=45 if len(names) > 4 else 0, ha="right")
    else:
        for i, label in enumerate(outputs):
            ax.plot(grid, average[i], marker=".", label=label)
    ax.set(xlabel=feature, ylabel="average prediction")
    ax.set_title(f"Partial dependence on {feature}")
    if len(outputs) > 1 or kind == "categorical":
        ax.legend(fontsize="small")
    return _png(fig)
