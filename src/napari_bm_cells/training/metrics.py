"""Classification metrics used in the field (sklearn underneath)."""
from __future__ import annotations

import numpy as np

from ..taxonomy import DEFAULT_TOLERANT_PAIRS, lineage_of, score_map


def tolerant_predictions(y_true, y_pred, pairs=DEFAULT_TOLERANT_PAIRS) -> np.ndarray:
    """Replace a prediction by the truth where the two form a forgiven pair."""
    forgiven = {frozenset(p) for p in pairs}
    y_true, y_pred = np.asarray(y_true, object), np.asarray(y_pred, object)
    hit = np.array([frozenset((t, p)) in forgiven for t, p in zip(y_true, y_pred)], bool)
    return np.where(hit, y_true, y_pred)


def classification_metrics(y_true, probs: np.ndarray, classes, tolerant_pairs=DEFAULT_TOLERANT_PAIRS) -> dict:
    """Per-class P/R/F1/support, macro/weighted F1, MCC, accuracy, confusion matrix,
    tolerant and lineage-level scores, ROC AUC of P(blast) and P(atypical).

    Parameters
    ----------
    y_true : sequence of str
        True class codes (codes the model lacks count as errors).
    probs : (N, C) array
        Model probabilities in the order of ``classes``.
    """
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                                 precision_recall_fscore_support, roc_auc_score)

    classes = list(classes)
    y_true = np.asarray(y_true, object)
    y_pred = np.asarray(classes, object)[np.asarray(probs).argmax(1)]
    labels = sorted(set(classes) | set(y_true))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [i for i, c in enumerate(labels) if s[i] > 0]
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f[present])) if present else 0.0,
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, c in enumerate(labels)},
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    y_tol = tolerant_predictions(y_true, y_pred, tolerant_pairs)
    out["tolerant"] = {"pairs": [list(pp) for pp in tolerant_pairs],
                       "accuracy": float(accuracy_score(y_true, y_tol)),
                       "macro_f1": float(np.mean(precision_recall_fscore_support(
                           y_true, y_tol, labels=[labels[i] for i in present], zero_division=0)[2]))
                       if present else 0.0}
    lt = np.array([lineage_of(c) for c in y_true])
    lp = np.array([lineage_of(c) for c in y_pred])
    out["lineage"] = {"accuracy": float(accuracy_score(lt, lp)),
                      "macro_f1": float(f1_score(lt, lp, average="macro", zero_division=0))}
    sm = score_map(classes)
    for name, idx, members in (("blast", sm.blast_idx, None), ("atypical", sm.atypical_idx, None)):
        if not idx:
            continue
        score = np.asarray(probs)[:, list(idx)].sum(1)
        truth = np.isin(y_true, [classes[i] for i in idx])
        if 0 < truth.sum() < len(truth):
            out[f"roc_auc_{name}"] = float(roc_auc_score(truth, score))
    return out
