"""MixStyle: mix the feature statistics of the crops in a batch while training.

Each crop's early feature maps are renormalised to a mixture of its own and another
crop's channel means and spreads (Zhou et al., "Domain generalization with MixStyle",
ICLR 2021), so the network learns to type a cell whatever its smear's colour and
contrast statistics. Only while training: a model in ``eval()`` mode is unchanged, and
the hooks hold no weights, so checkpoints are the same as without it.
"""
from __future__ import annotations

import torch


def mix_styles(x: torch.Tensor, alpha: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """Give each sample of ``x`` (B, C, H, W) channel statistics mixed with another's.

    The mixing weight of each sample is drawn from Beta(alpha, alpha); the partner is a
    random permutation of the batch.
    """
    b = x.shape[0]
    if b < 2:
        return x
    dims = (2, 3)
    mu = x.mean(dims, keepdim=True)
    sig = (x.var(dims, keepdim=True) + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()
    normed = (x - mu) / sig
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = beta.sample((b, 1, 1, 1)).to(x.device, x.dtype)
    perm = torch.randperm(b).to(x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return normed * sig_mix + mu_mix


def early_stages(model: torch.nn.Module, n: int = 2) -> list[torch.nn.Module]:
    """The first ``n`` stages of a timm network: ``stages`` (ResNeXt-ts, CoAtNet), ``blocks``
    (EfficientNet) or ``layer1``, ``layer2`` ... (classic ResNet / ResNeXt).

    Raises
    ------
    InputError
        The architecture has none of these.
    """
    from ..errors import InputError

    for name in ("stages", "blocks"):
        stages = getattr(model, name, None)
        if stages is not None and len(stages) >= n:
            return list(stages)[:n]
    layers = [getattr(model, f"layer{i}", None) for i in range(1, n + 1)]
    if all(layer is not None for layer in layers):
        return layers
    raise InputError(f"{type(model).__name__}: no 'stages', 'blocks' or 'layer1' to apply MixStyle "
                     "after; train without --mixstyle or choose a ResNeXt / CoAtNet / EfficientNet --arch")


def add_mixstyle(model: torch.nn.Module, p: float = 0.5, alpha: float = 0.1, n_stages: int = 2):
    """Apply :func:`mix_styles` after the first ``n_stages`` stages of ``model`` in training.

    Parameters
    ----------
    p : float
        Probability that a batch is mixed at each of those stages.

    Returns
    -------
    list of hook handles (``handle.remove()`` takes MixStyle off again).
    """
    def hook(module, _inputs, out):
        if not module.training or torch.rand(()) >= p:
            return out
        return mix_styles(out, alpha)

    return [s.register_forward_hook(hook) for s in early_stages(model, n_stages)]
