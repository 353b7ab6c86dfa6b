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


def test_classic_resnets_and_other_architectures(batch):
    import timm

    from napari_bm_cells.errors import InputError

    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    assert early_stages(model) == [model.layer1, model.layer2]
    with pytest.raises(InputError, match="no 'stages', 'blocks' or 'layer1'"):
        early_stages(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))


def test_training_with_mixstyle_records_it_and_keeps_the_checkpoints_tensors(data_dir, tmp_path):
    from napari_bm_cells.checkpoint import load_model
    from napari_bm_cells.training.train_classifier import train_classifier

    data = tmp_path / "pbc3"
    for c in ("EOS", "LYT", "NGS"):
        (data / c).mkdir(parents=True)
        for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:6]:
            (data / c / p.name).symlink_to(p)
    outs = {}
    for p in (0.0, 0.5):
        out = tmp_path / f"m{p}.safetensors"
        train_classifier(data, out, arch="resnet10t", img_size=32, batch_size=4, epochs=1, max_steps=2,
                         mixstyle=p, progress=lambda s: None)
        outs[p] = load_model(out, "cpu")
    (plain, plain_meta), (mixed, mixed_meta) = outs[0.0], outs[0.5]
    assert "MixStyle p=0.5" in mixed_meta.trained_on and "MixStyle" not in plain_meta.trained_on
    assert list(mixed.state_dict()) == list(plain.state_dict())
