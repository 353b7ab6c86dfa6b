"""MixStyle on real PBC crops: statistics mixed only in training, checkpoints unchanged."""
import numpy as np
import pytest
import torch
from PIL import Image

from napari_bm_cells.training.mixstyle import add_mixstyle, early_stages, mix_styles


@pytest.fixture(scope="module")
def batch(data_dir):
    """Eight real PBC crops of four classes at 64 px, normalised, (8, 3, 64, 64)."""
    crops = []
    for c in ("EOS", "LYT", "MON", "NGS"):
        for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:2]:
            crops.append(np.asarray(Image.open(p).convert("RGB").resize((64, 64))))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25


def test_mixed_statistics_lie_between_the_crops_own_and_a_partners(batch):
    torch.manual_seed(0)
    out = mix_styles(batch, alpha=0.1)
    assert out.shape == batch.shape
    mu, mu_out = batch.mean((2, 3)), out.mean((2, 3))
    # each crop's new channel means are a mix of two crops': within the batch's range
    assert (mu_out >= mu.min(0).values - 1e-4).all() and (mu_out <= mu.max(0).values + 1e-4).all()
    assert not torch.allclose(out, batch, atol=1e-3), "no crop's statistics changed"
    # the spatial pattern within each channel is kept (only mean and spread move)
    z = lambda t: (t - t.mean((2, 3), keepdim=True)) / t.std((2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(z(out), z(batch), atol=1e-3)


def test_hooks_act_only_in_training_and_leave_the_weights_alone(batch):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnext26ts", pretrained=False, num_classes=4)
    keys = list(model.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        plain = model(batch)
        handles = add_mixstyle(model, p=1.0)
        assert len(handles) == 2 and list(model.state_dict()) == keys
        assert torch.equal(model(batch), plain), "MixStyle changed the model's outputs at inference"
        seen = []
        first = early_stages(model)[0]
        first.register_forward_hook(lambda m, i, o: seen.append(o.mean((2, 3))))
        model.train()
        model(batch)
        model.load_state_dict(weights)  # training mode moved batch norm's running statistics
        model.eval()
        model(batch)
    assert not torch.allclose(seen[0], seen[1], atol=1e-4), "training did not mix the first stage's statistics"
    for h in handles:
        h.remove()
    with torch.no_grad():
        assert torch.equal(model(batch), plain)


def test_an_architecture_without_stages_is_refused():
    with pytest.raises(ValueError, match="no 'stages' or 'blocks'"):
        early_stages(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
