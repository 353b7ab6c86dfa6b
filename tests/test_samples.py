"""Sample data: local copy first, pooch download otherwise, clear error when offline."""
import pytest

from napari_bm_cells import samples
from napari_bm_cells.errors import InputError


def test_sample_comes_from_local_data(data_dir, monkeypatch):
    monkeypatch.setenv("BM_CELLS_DATA", str(data_dir))
    p = samples.sample_path()
    assert p.is_file() and p.parent == data_dir / "bccd" / "JPEGImages"


def test_sample_is_downloaded_with_pooch_when_not_local(monkeypatch, tmp_path):
    import pooch
    calls = {}

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls["url"], calls["hash"] = url, known_hash
        f = tmp_path / fname
        f.write_bytes(b"jpeg")
        return str(f)

    monkeypatch.setattr(samples, "_local_data_dir", lambda: None)
    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    p = samples.sample_path()
    assert p.read_bytes() == b"jpeg"
    assert calls["url"].startswith("https://raw.githubusercontent.com/Shenggan/BCCD_Dataset/")
    assert calls["hash"] == "sha256:" + samples.SAMPLES["bccd-field"][1]  # downloads are checked


def test_every_sample_hash_matches_the_real_data(data_dir):
    import hashlib

    for name, (fname, sha) in samples.SAMPLES.items():
        f = data_dir / "bccd" / "JPEGImages" / fname
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sha, name


def test_napari_samples_load_a_real_field(data_dir, monkeypatch):
    from napari_bm_cells.gui.sample_data import bccd_field, bccd_field_2

    monkeypatch.setenv("BM_CELLS_DATA", str(data_dir))
    for fn, stem in ((bccd_field, "BloodImage_00000"), (bccd_field_2, "BloodImage_00022")):
        [(data, kwargs, kind)] = fn()
        assert kind == "image" and kwargs["name"] == f"BCCD {stem}"


def test_offline_without_local_copy_gives_a_clear_error(monkeypatch):
    import pooch

    def offline(*a, **k):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(samples, "_local_data_dir", lambda: None)
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(InputError, match="BM_CELLS_DATA"):
        samples.sample_path()


def test_a_failed_download_prints_no_downloading_line(monkeypatch, tmp_path, capsys, caplog):
    """Offline (here: a port nothing listens on), the sample loader says only why it failed:
    no "Downloading ..." line from pooch before the error."""
    import logging

    import pooch

    monkeypatch.setattr(samples, "_local_data_dir", lambda: None)
    monkeypatch.setattr(samples, "BCCD_URL", "http://127.0.0.1:9/{name}")
    monkeypatch.setattr(pooch, "os_cache", lambda name: tmp_path)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError, match="download failed"):
        samples.sample_path()
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert "Downloading" not in said, said
