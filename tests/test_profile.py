"""Fitting a profile on a tiny model, and saving/loading it safely."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from conftest import BORDERLINE, FIT_KWARGS, HARMFUL, HARMLESS, _fitted, _tiny, make_model, make_scans
from scans.activations import collect
from scans.classifier import SHRINKAGE_GRID
from scans.errors import ScansError
from scans.fit_data import split_anchors
from scans.profile import FORMAT_VERSION, METADATA, TENSOR_FIELDS, TENSORS, Profile
from scans.vectors import mean_difference


def _one_line_fix(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    assert "fix:" in message, message
    return message


# ------------------------------------------------------------------------ fit
def test_fit_produces_profile(fitted):
    p = fitted.profile
    assert isinstance(p, Profile)
    assert p.model_name == "tiny" and p.fingerprint == fitted.fingerprint
    assert p.vectors.shape == (2, 32) and p.reference.shape == (2, 32) and p.norms.shape == (2,)
    assert torch.allclose(p.vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert (p.norms > 0).all()
    assert p.classifier == "instruction" and p.contrast is not None and p.contrast.shape == (2, 32)
    assert p.steer_layers and all(0 <= l < 2 for l in p.steer_layers)
    assert p.steer_layers == sorted(p.steer_layers)
    assert p.cls_layers == [1]  # the upper half of the two layers, whatever the seed's band
    assert p.harmful_sign in (0, 1)
    assert p.threshold == p.calibration["threshold"]
    # cross-fitted calibration: fit and held-out anchors form one pool, scored out of fold
    n_x = len(p.extra["heldout_scores"]["borderline"])
    assert p.calibration["n_harmful"] == 10 and p.calibration["n_harmless"] == 10 + n_x
    assert p.extra["calibration_mode"] == "crossfit" and p.extra["shrinkage"]["instruction"] in SHRINKAGE_GRID
    assert p.anchors["n_fit"] == 6 and p.anchors["n_heldout"] == 4 and p.anchors["n_layer_eval"] == 4
    assert [e["layer"] for e in p.layer_evidence] == [0, 1]
    assert p.extra["layers_source"] != "user"


def test_heldout_calibration_keeps_the_heldout_anchors_out():
    t = _tiny("qwen2")
    p = make_scans(t.model, t.tokenizer).fit(
        HARMFUL, HARMLESS, BORDERLINE, calibration="heldout", **FIT_KWARGS
    )
    assert p.calibration["n_harmful"] == 4 and p.calibration["n_harmless"] == 8
    assert p.extra["calibration_mode"] == "heldout"
    assert len(p.extra["heldout_scores"]["harmful"]) == 4


def test_fit_vectors_are_the_mean_difference(fitted):
    """Step 1 end to end: the profile's vectors are the normalised mean difference of the
    instruction-end activations of the (seeded) fit anchors."""
    t = _tiny("qwen2")
    fit_h, _ = split_anchors(HARMFUL, 6, 4, 0, "harmful")
    fit_b, _ = split_anchors(HARMLESS, 6, 4, 0, "harmless")
    inst_h = collect(t.model, t.tokenizer, fit_h, progress=False)["inst"]
    inst_b = collect(t.model, t.tokenizer, fit_b, progress=False)["inst"]
    assert torch.allclose(fitted.profile.vectors, mean_difference(inst_h, inst_b), atol=1e-4)


def test_fit_is_deterministic(fitted):
    t = _tiny("qwen2")
    again = make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, **FIT_KWARGS)
    assert torch.equal(again.vectors, fitted.profile.vectors)
    assert again.threshold == fitted.profile.threshold
    other_seed = make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, seed=1, **FIT_KWARGS)
    assert not torch.equal(other_seed.vectors, fitted.profile.vectors)


@pytest.mark.parametrize("layers", [(1,), (0,)])
def test_fit_layers_override(layers):
    p = _fitted("qwen2", layers=layers).profile
    assert p.steer_layers == list(layers)
    assert p.cls_layers == [1]  # the steering layers do not move the classification layers
    assert p.extra["layers_source"] == "user"


def test_fit_threshold_override(fitted):
    p = _fitted("qwen2", threshold=0.123).profile
    assert p.threshold == 0.123
    assert p.calibration["threshold_override"] == 0.123
    assert p.calibration["threshold"] == fitted.profile.calibration["threshold"]


def test_fit_cosine_classifier():
    p = _fitted("qwen2", classifier="cosine").profile
    assert p.classifier == "cosine"
    tau = torch.stack([p.reference, -p.reference])
    assert torch.allclose(p.scores(tau), torch.tensor([1.0, -1.0]), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_fit=10, n_heldout=4),  # 14 > 12 anchors
        dict(n_fit=1, n_heldout=4),
        dict(classifier="knn"),
        dict(harmful_policy="maybe"),
        dict(layers=[5]),
        dict(calibration="cv"),
        dict(shrinkage=1.5),
        dict(n_fit=2, calibration="heldout"),  # 2 harmful rows cannot make 4 folds
    ],
)
def test_fit_bad_arguments(kwargs):
    t = _tiny("qwen2")
    args = {**FIT_KWARGS, **kwargs}
    with pytest.raises(ScansError) as info:
        make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, **args)
    _one_line_fix(info)


def test_fit_harmful_policy():
    assert _fitted("qwen2", harmful_policy="none").profile.harmful_sign == 0
    assert _fitted("qwen2", harmful_policy="refuse").profile.harmful_sign == 1


# ------------------------------------------------------------------------ save / load
def _assert_same(a: Profile, b: Profile) -> None:
    for name in TENSOR_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
        else:
            assert y.dtype == x.dtype and torch.equal(x, y), name
    for f in dataclasses.fields(Profile):
        if f.name not in TENSOR_FIELDS:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_save_load_round_trip(fitted, tmp_path):
    p = fitted.profile
    out = p.save(tmp_path / "prof")
    assert sorted(x.name for x in out.iterdir()) == sorted([TENSORS, METADATA])
    loaded = Profile.load(out, fingerprint=fitted.fingerprint)
    _assert_same(p, loaded)
    assert loaded.steer_layers == p.steer_layers and loaded.threshold == p.threshold
    assert loaded.alpha == p.alpha and loaded.calibration == p.calibration
    meta = json.loads((out / METADATA).read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["n_layers"] == 2 and meta["hidden_size"] == 32
    # saving again over the same directory works and leaves no temporary files
    p.save(out)
    assert sorted(x.name for x in out.iterdir()) == sorted([TENSORS, METADATA])


def test_saved_files_are_not_pickles(fitted, tmp_path):
    out = fitted.profile.save(tmp_path / "prof")
    from safetensors import safe_open

    with safe_open(str(out / TENSORS), "pt") as f:
        assert set(f.keys()) == {n for n in TENSOR_FIELDS if getattr(fitted.profile, n) is not None}
    for path in out.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{path.name} looks like a pickle"
        assert not path.name.endswith((".pt", ".pkl", ".bin"))


def test_scans_save_load_default_slot(fitted):
    t = _tiny("qwen2")
    owner = make_scans(t.model, t.tokenizer)
    owner.profile = fitted.profile
    path = owner.save()
    assert path == owner.default_profile_path and (path / METADATA).is_file()
    fresh = make_scans(t.model, t.tokenizer)
    _assert_same(fresh.load(), fitted.profile)


def test_load_wrong_fingerprint(fitted, tmp_path):
    out = fitted.profile.save(tmp_path / "prof")
    with pytest.raises(ScansError) as info:
        Profile.load(out, fingerprint="0" * 16)
    message = _one_line_fix(info)
    assert fitted.fingerprint in message


@pytest.mark.parametrize("arch,seed", [("qwen2", 1), ("llama", 0)])
def test_scans_load_other_model(fitted, tmp_path, arch, seed):
    out = fitted.profile.save(tmp_path / "prof")
    other = make_scans(make_model(arch, seed=seed), _tiny(arch).tokenizer)
    with pytest.raises(ScansError) as info:
        other.load(out)
    _one_line_fix(info)
    assert other.profile is None


def test_scans_load_layer_count_mismatch(fitted, tmp_path):
    p = fitted.profile
    three = dataclasses.replace(
        p,
        vectors=torch.cat([p.vectors, p.vectors[:1]]),
        reference=torch.cat([p.reference, p.reference[:1]]),
        norms=torch.cat([p.norms, p.norms[:1]]),
        contrast=torch.cat([p.contrast, p.contrast[:1]]),
        contrast_mean=torch.cat([p.contrast_mean, p.contrast_mean[:1]]),
        contrast_std=torch.cat([p.contrast_std, p.contrast_std[:1]]),
    )
    out = three.save(tmp_path / "three")
    t = _tiny("qwen2")
    with pytest.raises(ScansError, match="layers") as info:
        make_scans(t.model, t.tokenizer).load(out)
    _one_line_fix(info)


def test_load_missing_dir(tmp_path):
    with pytest.raises(ScansError) as info:
        Profile.load(tmp_path / "nothing-here")
    _one_line_fix(info)


def test_scans_load_without_cached_profile():
    t = _tiny("qwen2")
    with pytest.raises(ScansError) as info:
        make_scans(t.model, t.tokenizer).load()
    _one_line_fix(info)


def test_load_missing_tensor_file(fitted, tmp_path):
    out = fitted.profile.save(tmp_path / "prof")
    (out / TENSORS).unlink()
    with pytest.raises(ScansError) as info:
        Profile.load(out)
    _one_line_fix(info)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "old-format"])
def test_load_corrupt_profile_json(fitted, tmp_path, damage):
    out = fitted.profile.save(tmp_path / "prof")
    text = (out / METADATA).read_text()
    if damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "garbage":
        text = "\x00\x01not json"
    elif damage == "empty":
        text = ""
    else:
        meta = json.loads(text)
        meta["format_version"] = 0
        text = json.dumps(meta)
    (out / METADATA).write_text(text)
    with pytest.raises(ScansError) as info:
        Profile.load(out, fingerprint=fitted.fingerprint)
    _one_line_fix(info)


@pytest.mark.parametrize("content", ["[1, 2]", '{"format_version": 1}', '"text"'])
def test_load_corrupt_profile_json_wrong_shape(fitted, tmp_path, content):
    out = fitted.profile.save(tmp_path / "prof")
    (out / METADATA).write_text(content)
    with pytest.raises(ScansError) as info:
        Profile.load(out, fingerprint=fitted.fingerprint)
    _one_line_fix(info)


def test_profile_json_is_plain_data(fitted, tmp_path):
    out = fitted.profile.save(tmp_path / "prof")
    meta = json.loads((out / METADATA).read_text())
    for name in TENSOR_FIELDS:
        assert name not in meta
    assert meta["steer_layers"] == fitted.profile.steer_layers


# ------------------------------------------------------------------------ Profile validation
def _small(**kw):
    base = dict(
        model_name="m",
        fingerprint="f",
        vectors=torch.eye(3, 4),
        reference=torch.ones(3, 4),
        norms=torch.tensor([1.0, 2.0, 4.0]),
        steer_layers=[1],
        cls_layers=[1, 2],
        alpha=0.5,
        threshold=0.0,
        classifier="cosine",
    )
    return Profile(**{**base, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        dict(steer_layers=[3]),
        dict(steer_layers=[]),
        dict(cls_layers=[-1]),
        dict(classifier="svm"),
        dict(classifier="contrast"),  # without a contrast direction
        dict(alpha_mode="percent"),
    ],
)
def test_profile_validation(kw):
    with pytest.raises(ScansError) as info:
        _small(**kw)
    _one_line_fix(info)


def test_profile_coefficient():
    assert _small().coefficient(2) == pytest.approx(0.5 * 4.0)
    assert _small(alpha_mode="absolute").coefficient(2) == pytest.approx(0.5)


def test_profile_save_keeps_no_temp_files_on_failure(fitted, tmp_path, monkeypatch):
    import scans.profile as profile_mod

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(profile_mod, "save_file", boom)
    with pytest.raises(OSError):
        fitted.profile.save(tmp_path / "prof")
    assert list((tmp_path / "prof").iterdir()) == []


def test_copied_profile_dir_loads(fitted, tmp_path):
    out = fitted.profile.save(tmp_path / "a")
    shutil.copytree(out, tmp_path / "b")
    _assert_same(Profile.load(tmp_path / "b", fingerprint=fitted.fingerprint), fitted.profile)


def test_load_corrupt_safetensors_is_a_clear_error(fitted, tmp_path):
    out = fitted.profile.save(tmp_path / "prof")
    (out / "vectors.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ScansError) as info:
        Profile.load(out, fingerprint=fitted.fingerprint)
    _one_line_fix(info)
