"""The slide's class mix, estimated from its own cells, as the prior of each cell's type.

A classifier trained with every class drawn equally often (``train-classifier``'s
default) types each crop as if all types were equally common. On a slide they are not:
in blood about half the white cells are segmented neutrophils and myelocytes are rare, in
marrow erythroblasts and myelocytes are common. The expectation-maximisation of Saerens
et al. (2002) estimates the slide's class proportions from the classifier's probabilities
of all its cells, and Bayes' rule then re-weights each cell's probabilities by them.

The full re-weighting moves too many rare cells to the common types (a myelocyte in
blood), so the weights are tempered: each class's probability is multiplied by
(estimated proportion / training proportion) ** ``strength`` (0.5 by default; 0 leaves
the probabilities, 1 is the full Bayes update). Slides with fewer than ``min_cells``
cells keep their probabilities: a handful of cells says little about the slide's mix.
"""
from __future__ import annotations

import numpy as np

#: fewest cells whose probabilities estimate a slide's class mix
MIN_CELLS = 50
#: exponent of the prior ratio applied to each cell's probabilities
STRENGTH = 0.5
#: pseudo-count per class added to the estimated mix (no class's proportion reaches 0)
PSEUDO_COUNT = 1.0


def estimate_mix(probs: np.ndarray, train_prior: np.ndarray | None = None, pseudo_count: float = PSEUDO_COUNT,
                 max_iter: int = 200, tol: float = 1e-6) -> np.ndarray:
    """Class proportions of a set of cells by expectation-maximisation (Saerens et al. 2002).

    Parameters
    ----------
    probs : (N, K) array
        Each cell's class probabilities from a classifier trained with ``train_prior``.
    train_prior : (K,) array, optional
        The class proportions of its training draws (default: all equal).
    pseudo_count : float
        Added to each class's expected count in every step.

    Returns
    -------
    (K,) array summing to 1.
    """
    probs = np.asarray(probs, np.float64)
    n, k = probs.shape
    base = np.full(k, 1.0 / k) if train_prior is None else np.asarray(train_prior, np.float64)
    mix = base.copy()
    for _ in range(max_iter):
        post = probs * (mix / base)
        post /= np.maximum(post.sum(1, keepdims=True), 1e-12)
        new = (post.sum(0) + pseudo_count) / (n + k * pseudo_count)
        done = np.abs(new - mix).max() < tol
        mix = new
        if done:
            break
    return mix


def adapt_to_slide(probs: np.ndarray, classes, min_cells: int | None = None, strength: float = STRENGTH,
                   train_prior: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Each cell's probabilities re-weighted by the slide's estimated class mix.

    Parameters
    ----------
    probs : (N, K) array
        Class probabilities of the slide's cells.
    classes : sequence of str
        The K class codes.
    min_cells : int, optional
        Fewer cells: the probabilities are returned as they are (default :data:`MIN_CELLS`).
    strength : float
        Exponent of the ratio of estimated to training proportion (0-1).

    Returns
    -------
    adapted : (N, K) float32 array
    info : dict
        ``adapted`` (bool), ``n_cells``, ``strength`` and, when adapted, ``mix``: the
        estimated proportion of each class (for ``summary.json``).
    """
    probs = np.asarray(probs, np.float32)
    min_cells = MIN_CELLS if min_cells is None else min_cells
    info = {"adapted": False, "n_cells": int(len(probs)), "min_cells": min_cells, "strength": strength}
    if len(probs) < min_cells or strength == 0:
        return probs, info
    k = probs.shape[1]
    base = np.full(k, 1.0 / k) if train_prior is None else np.asarray(train_prior, np.float64)
    mix = estimate_mix(probs, base)
    out = probs * ((mix / base) ** strength).astype(np.float32)
    out /= np.maximum(out.sum(1, keepdims=True), 1e-12)
    info.update(adapted=True, mix={c: round(float(m), 4) for c, m in zip(classes, mix)})
    return out.astype(np.float32), info
