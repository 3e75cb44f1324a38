"""Reading the three layouts from tiny NIfTI files written here: orientation, resampling, intensities, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glcl_core.data import DataError, detect_layout, load_volumes, summarize
from glcl_core.data.orientation import canonical_orientation

# ----------------------------------------------------------------------------------------------- helpers


def save(path: Path, array: np.ndarray, affine: np.ndarray, on_disk_dtype=None) -> Path:
    """Write a NIfTI; ``on_disk_dtype`` lets nibabel store float data as scaled integers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(array), affine)
    if on_disk_dtype is not None:
        image.set_data_dtype(on_disk_dtype)
    nib.save(image, str(path))
    return path


def grid_affine(spacing=(1.0, 1.2, 3.0), origin=(-10.0, 20.0, -5.0), rotation=None) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    if rotation is not None:
        affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = origin
    return affine


def rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, b = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def phantom(shape=(18, 14, 7), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric image/label pair on an ``(X, Y, Z)`` grid: every flip or transpose changes it."""
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    label = np.zeros(shape, dtype=np.uint8)
    label[(x - 8) ** 2 / 25 + (y - 6) ** 2 / 16 + (z - 3) ** 2 / 4 <= 1] = 1
    label[2:5, 1:4, 1:3] = 2  # corner block: breaks every symmetry
    label[12:16, 9:12, 4:6] = 3
    noise = np.random.default_rng(seed).normal(0, 3, shape)
    image = (100 + 10 * x + 4 * y + 2 * z + 60 * label + noise).astype(np.float32)
    return image, label


def reorder(array: np.ndarray, affine: np.ndarray, ornt: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Store the same scan with axes flipped/permuted (nibabel's own orientation tools), affine kept consistent."""
    ornt = np.asarray(ornt, dtype=float)
    stored = nib.orientations.apply_orientation(array, ornt)
    return np.ascontiguousarray(stored), affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with size and mtime (ns)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.stat()
            state[str(path.relative_to(folder))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return state


def make_decathlon(root: Path, n_cases: int = 2, channels: int = 2, label_value: int | None = None) -> Path:
    """Prostate-like Decathlon folder: 4D (X, Y, Z, C) images; channel 0 varies along x, channel 1 along y."""
    affine = grid_affine(spacing=(0.6, 0.6, 3.6))
    training = []
    for i in range(n_cases):
        image, label = phantom(seed=i)
        if label_value is not None and i == n_cases - 1:
            label[label == 3] = label_value
        x, y = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
        ch1 = np.broadcast_to((y * 50.0)[:, :, None], image.shape)
        stacked = np.stack([image, ch1 + label * 3.0][:channels], axis=-1).astype(np.int16)
        save(root / "imagesTr" / f"prostate_{i:02d}.nii.gz", stacked, affine)
        save(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", label, affine)
        name = f"prostate_{i:02d}.nii.gz"
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "labelsTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (root / ".DS_Store").write_bytes(b"junk")
    meta = {"name": "Prostate", "labels": {"0": "background", "1": "PZ", "2": "TZ", "3": "lesion"},
            "modality": {"0": "T2", "1": "ADC"}, "numTraining": n_cases, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def sax_affine(direction=(0.5, -0.55, 0.65), spacing=(1.5, 1.5, 10.0)) -> np.ndarray:
    """Oblique cardiac short-axis grid: slice normal along ``direction`` (RAS), thick slices."""
    normal = np.asarray(direction, float) / np.linalg.norm(direction)
    u = np.cross(normal, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([u, v, normal], axis=1) * np.asarray(spacing)
    affine[:3, 3] = (-40.0, 30.0, 10.0)
    return affine


def make_acdc_patient(folder: Path, ed: int = 1, es: int = 3, direction=(0.5, -0.55, 0.65)) -> Path:
    patient = folder.name
    affine = sax_affine(direction)
    frames = []
    for t in range(4):
        image, label = phantom(shape=(16, 16, 6), seed=t)
        frames.append(image)
        if t + 1 in (ed, es):
            save(folder / f"{patient}_frame{t + 1:02d}.nii.gz", image.astype(np.int16), affine)
            save(folder / f"{patient}_frame{t + 1:02d}_gt.nii.gz", label, affine)
    save(folder / f"{patient}_4d.nii.gz", np.stack(frames, axis=-1).astype(np.int16), affine)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 4\nWeight: 80.0\n")
    (folder / f"._{patient}_frame01.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    return folder


def make_plain(root: Path) -> Path:
    affine = grid_affine()
    for i, suffix in enumerate(["_label", "_seg", "_gt"]):
        image, label = phantom(seed=i)
        save(root / f"case{i}.nii.gz", image, affine)
        save(root / f"case{i}{suffix}.nii.gz", label, affine)
    save(root / "unlabelled.nii", phantom(seed=9)[0], affine)
    (root / "._case0.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    return root


FAST = dict(spacing=None, size=None)  # no resampling: arrays compare voxel for voxel

# ----------------------------------------------------------------------------------------------- layouts


def test_decathlon_4d_channels_labels_and_debris(tmp_path):
    root = make_decathlon(tmp_path / "Task05_Prostate")
    assert detect_layout(root) == "decathlon"
    t2 = load_volumes(root, spacing=0.6, size=(24, 24))
    adc = load_volumes(root, spacing=0.6, size=(24, 24), channel=1)
    assert [v.name for v in t2] == ["prostate_00", "prostate_01"]
    for v in t2 + adc:
        assert v.image.dtype == np.float32 and v.image.shape == (7, 24, 24)
        assert v.label.dtype == np.int64 and set(np.unique(v.label)) <= {0, 1, 2, 3}
        assert v.spacing == pytest.approx((3.6, 0.6, 0.6))
        assert v.source.endswith(f"{v.name}.nii.gz") and v.meta["layout"] == "decathlon"
    # channel 0 varies mostly along x (columns after reorientation), channel 1 along y (rows).
    inner = (slice(None), slice(6, 18), slice(6, 18))
    d_rows = lambda a: np.abs(np.diff(a[inner], axis=1)).mean()
    d_cols = lambda a: np.abs(np.diff(a[inner], axis=2)).mean()
    assert d_cols(t2[0].image) > d_rows(t2[0].image)
    assert d_rows(adc[0].image) > 3 * d_cols(adc[0].image)
    assert np.array_equal(t2[0].label, adc[0].label)
    with pytest.raises(DataError, match=r"prostate_00\.nii\.gz.*channel=2"):
        load_volumes(root, channel=2)


def test_decathlon_without_training_list_scans_folders_and_skips_debris(tmp_path):
    root = make_decathlon(tmp_path / "task", n_cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["training"]
    (root / "dataset.json").write_text(json.dumps(meta))
    volumes = load_volumes(root, size=32)
    assert [v.name for v in volumes] == ["prostate_00", "prostate_01"]
    assert all(v.label is not None for v in volumes)


def test_acdc_root_single_patient_frames_and_4d_ignored(tmp_path):
    root = tmp_path / "ACDC" / "database"
    make_acdc_patient(root / "training" / "patient001", ed=1, es=3)
    make_acdc_patient(root / "testing" / "patient101", ed=2, es=4, direction=(0.7, -0.45, 0.55))
    assert detect_layout(tmp_path / "ACDC") == "acdc"

    both = load_volumes(tmp_path / "ACDC", size=32)
    assert [v.name for v in both] == ["patient001_frame01", "patient001_frame03", "patient101_frame02",
                                      "patient101_frame04"]
    assert [v.meta["frame"] for v in both] == ["ED", "ES", "ED", "ES"]
    assert {v.meta["subject"] for v in both} == {"patient001", "patient101"}
    for v in both:  # the thick oblique stack keeps its 6 slices of 10 mm; no 4D cine loaded
        assert v.image.shape == (6, 32, 32) and v.spacing[0] == pytest.approx(10.0)
        assert "_4d" not in v.source

    ed = load_volumes(root / "training" / "patient001", frames="ED", size=32)
    assert [v.name for v in ed] == ["patient001_frame01"]
    assert np.array_equal(ed[0].label, both[0].label)
    es = load_volumes(tmp_path / "ACDC", frames=("ES",), size=32)
    assert [v.name for v in es] == ["patient001_frame03", "patient101_frame04"]
    assert [v.name for v in load_volumes(root / "training", size=32)] == ["patient001_frame01", "patient001_frame03"]


def test_acdc_slice_order_follows_the_heart_for_any_dominant_axis(tmp_path):
    """Slices run toward (Right, Posterior, Superior) whether z or x dominates the oblique slice normal."""
    for i, direction in enumerate([(0.5, -0.55, 0.65), (0.7, -0.45, 0.55), (0.45, -0.7, 0.5)]):
        make_acdc_patient(tmp_path / f"patient{i:03d}", direction=direction)
    volumes = load_volumes(tmp_path, frames="ED", size=32)
    for v in volumes:
        slice_direction = v.meta["canonical_affine"][:3, 0]
        assert slice_direction @ np.array([1.0, -1.0, 1.0]) > 0, v.name
    # the same patient stored with the slice order reversed loads identically
    affine = sax_affine()
    image, label = phantom(shape=(16, 16, 6), seed=0)
    flipped_image, flipped_affine = reorder(image, affine, [[0, 1], [1, 1], [2, -1]])
    flipped_label, _ = reorder(label, affine, [[0, 1], [1, 1], [2, -1]])
    save(tmp_path / "a" / "scan.nii.gz", image, affine)
    save(tmp_path / "a" / "scan_gt.nii.gz", label, affine)
    save(tmp_path / "b" / "scan.nii.gz", flipped_image, flipped_affine)
    save(tmp_path / "b" / "scan_gt.nii.gz", flipped_label, flipped_affine)
    a, b = load_volumes(tmp_path / "a", **FAST)[0], load_volumes(tmp_path / "b", **FAST)[0]
    assert np.array_equal(a.label, b.label) and np.allclose(a.image, b.image)


def test_acdc_missing_info_cfg_is_named(tmp_path):
    patient = make_acdc_patient(tmp_path / "patient007")
    (patient / "Info.cfg").unlink()
    with pytest.raises(DataError, match=r"patient007.*Info\.cfg"):
        load_volumes(tmp_path)


def test_plain_folder_pairs_suffixes_and_allows_unlabelled(tmp_path):
    root = make_plain(tmp_path / "plain")
    volumes = load_volumes(root, size=40)
    assert [v.name for v in volumes] == ["case0", "case1", "case2", "unlabelled"]
    assert [v.label is not None for v in volumes] == [True, True, True, False]
    with pytest.raises(DataError, match="unlabelled.nii"):
        load_volumes(root, with_labels=True)
    assert all(v.label is None for v in load_volumes(root, size=40, with_labels=False))


def test_plain_images_and_labels_subfolders(tmp_path):
    root = tmp_path / "pairs"
    image, label = phantom()
    for name in ("a", "b"):
        save(root / "images" / f"{name}.nii.gz", image, grid_affine())
        save(root / "labels" / f"{name}.nii.gz", label, grid_affine())
    save(root / "images" / "c.nii.gz", image, grid_affine())
    volumes = load_volumes(root, **FAST)
    assert [v.name for v in volumes] == ["a", "b", "c"]
    assert volumes[0].label is not None and volumes[2].label is None
    assert np.array_equal(volumes[0].label, volumes[1].label)


def test_single_file_and_plain_4d_needs_a_channel(tmp_path):
    image, _ = phantom()
    single = save(tmp_path / "one" / "scan.nii.gz", image, grid_affine())
    assert load_volumes(single, **FAST)[0].image.shape == (7, 14, 18)
    cine = save(tmp_path / "cine" / "movie.nii.gz", np.stack([image, image * 2], axis=-1), grid_affine())
    with pytest.raises(DataError, match=r"movie\.nii\.gz.*channel"):
        load_volumes(tmp_path / "cine")
    frame = load_volumes(tmp_path / "cine", channel=1, **FAST)[0]
    assert frame.image.shape == (7, 14, 18)
    assert cine.exists()


# ----------------------------------------------------------------------------------------------- orientation


def test_ras_axial_maps_to_superior_slices_anterior_top_patient_right_left(tmp_path):
    image, label = phantom()
    save(tmp_path / "ras" / "v.nii.gz", image, grid_affine())
    save(tmp_path / "ras" / "v_label.nii.gz", label, grid_affine())
    volume = load_volumes(tmp_path / "ras", **FAST)[0]
    expected = np.transpose(label[::-1, ::-1, :], (2, 1, 0))  # (z up, y toward posterior, x toward left)
    assert np.array_equal(volume.label, expected)
    assert volume.spacing == pytest.approx((3.0, 1.2, 1.0))


STORAGES = {
    "LAS": [[0, -1], [1, 1], [2, 1]],
    "RPI": [[0, 1], [1, -1], [2, -1]],
    "slice-first ISL": [[2, -1], [0, 1], [1, -1]],  # stored axis 0 is world x -> output position 2, etc.
    "swapped in-plane": [[1, 1], [0, -1], [2, 1]],
}


@pytest.mark.parametrize("storage", list(STORAGES))
@pytest.mark.parametrize("oblique", [False, True])
def test_same_scan_in_any_storage_order_loads_to_the_same_arrays(tmp_path, storage, oblique):
    image, label = phantom()
    affine = grid_affine(rotation=rotation(14, -9) if oblique else None)
    save(tmp_path / "ref" / "v.nii.gz", image, grid_affine())
    save(tmp_path / "ref" / "v_label.nii.gz", label, grid_affine())
    stored_image, stored_affine = reorder(image, affine, STORAGES[storage])
    stored_label, _ = reorder(label, affine, STORAGES[storage])
    assert stored_image.shape != image.shape or not np.array_equal(stored_label, label)
    save(tmp_path / "other" / "v.nii.gz", stored_image, stored_affine)
    save(tmp_path / "other" / "v_label.nii.gz", stored_label, stored_affine)
    for kwargs in (FAST, dict(spacing=0.8, size=(20, 24))):
        reference = load_volumes(tmp_path / "ref", **kwargs)[0]
        other = load_volumes(tmp_path / "other", **kwargs)[0]
        assert np.array_equal(reference.label, other.label)
        assert np.allclose(reference.image, other.image, atol=1e-6)
        assert reference.spacing == pytest.approx(other.spacing)


def test_isotropic_data_slices_along_superior_inferior():
    for order in ([[0, 1], [1, 1], [2, 1]], [[2, 1], [1, 1], [0, 1]], [[1, 1], [2, 1], [0, 1]]):
        _, affine = reorder(np.zeros((8, 9, 10)), grid_affine(spacing=(1.0, 1.0, 1.05)), order)
        orientation = canonical_orientation(affine)
        assert orientation.world_axes[0] == 2  # the slice axis is world z whatever its stored position
        assert not orientation.flip[0]


def test_coarsest_axis_is_the_slice_axis_even_when_it_is_not_z():
    coronal = grid_affine(spacing=(0.8, 4.0, 0.8))  # thick coronal slices along world y
    orientation = canonical_orientation(coronal)
    assert orientation.order[0] == 1 and orientation.spacing[0] == pytest.approx(4.0)
    assert orientation.world_axes == (1, 2, 0)  # rows: S/I, columns: R/L


# ----------------------------------------------------------------------------------------------- resampling


def test_anisotropic_resampling_preserves_physical_size(tmp_path):
    spacing = (0.5, 1.0, 3.0)  # x, y, z in mm
    shape = (120, 60, 5)
    x, y = np.meshgrid(np.arange(shape[0]) * spacing[0], np.arange(shape[1]) * spacing[1], indexing="ij")
    disk = ((x - 30) ** 2 + (y - 30) ** 2 <= 10 ** 2)  # radius 10 mm
    label = np.repeat(disk[:, :, None], shape[2], axis=2).astype(np.uint8)
    image = (50 + 100 * label).astype(np.int16)
    save(tmp_path / "d" / "disk.nii.gz", image, grid_affine(spacing=spacing))
    save(tmp_path / "d" / "disk_seg.nii.gz", label, grid_affine(spacing=spacing))
    volume = load_volumes(tmp_path / "d", spacing=1.0, size=(48, 48))[0]
    assert volume.image.shape == (5, 48, 48) and volume.spacing == pytest.approx((3.0, 1.0, 1.0))
    area = volume.label[2].sum()
    assert abs(area - np.pi * 100) < 0.08 * np.pi * 100
    rows, cols = np.nonzero(volume.label[2])
    assert abs(rows.mean() - 23.5) < 1.5 and abs(cols.mean() - 23.5) < 1.5  # FOV centre kept
    # default "fit": the whole 60 x 60 mm field of view fits 32 x 32
    fitted = load_volumes(tmp_path / "d", size=32)[0]
    assert fitted.spacing[1:] == pytest.approx((60 / 32, 60 / 32))
    assert abs(fitted.label[2].sum() * (60 / 32) ** 2 - np.pi * 100) < 0.12 * np.pi * 100
    # padding with background and label 0
    padded = load_volumes(tmp_path / "d", spacing=1.0, size=(80, 90))[0]
    assert padded.image[:, :5].max() == 0 and padded.label[:, :, :10].max() == 0


def test_crop_keeps_the_centre(tmp_path):
    image, label = phantom(shape=(30, 30, 4))
    save(tmp_path / "c" / "v.nii.gz", image, grid_affine(spacing=(1.0, 1.0, 2.0)))
    save(tmp_path / "c" / "v_label.nii.gz", label, grid_affine(spacing=(1.0, 1.0, 2.0)))
    full = load_volumes(tmp_path / "c", **FAST)[0]
    cropped = load_volumes(tmp_path / "c", spacing=None, size=(10, 12))[0]
    assert np.array_equal(cropped.label, full.label[:, 10:20, 9:21])


# ----------------------------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_intensities_scale_to_unit_interval(tmp_path, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        data = rng.integers(0, 255, size=(20, 20, 6))
    else:
        data = rng.normal(-300, 500, size=(20, 20, 6))  # CT-like: negative Hounsfield units
    save(tmp_path / "i" / "v.nii.gz", data.astype(dtype), grid_affine())
    image = load_volumes(tmp_path / "i", **FAST)[0].image
    assert image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0
    assert 0.005 < np.mean(image == 0.0) < 0.03 and 0.005 < np.mean(image == 1.0) < 0.03  # 1 % clipped per side


def test_scaled_integer_storage_matches_float_storage(tmp_path):
    image, _ = phantom()
    ct = (image * 7.3 - 1500.0).astype(np.float32)
    save(tmp_path / "f" / "v.nii.gz", ct, grid_affine())
    save(tmp_path / "s" / "v.nii.gz", ct, grid_affine(), on_disk_dtype=np.int16)
    assert nib.load(str(tmp_path / "s" / "v.nii.gz")).dataobj.slope != 1.0
    a, b = load_volumes(tmp_path / "f", **FAST)[0], load_volumes(tmp_path / "s", **FAST)[0]
    assert np.allclose(a.image, b.image, atol=2e-3)


# ----------------------------------------------------------------------------------------------- bad inputs


def bad_truncated(root: Path) -> Path:
    path = save(root / "scan.nii.gz", phantom()[0], grid_affine())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bad_garbage(root: Path) -> Path:
    path = root / "scan.nii.gz"
    root.mkdir(parents=True)
    path.write_bytes(b"this is not a NIfTI file" * 20)
    return path


def bad_shape(root: Path) -> Path:
    image, label = phantom()
    save(root / "scan.nii.gz", image, grid_affine())
    return save(root / "scan_label.nii.gz", label[:, :, :-1], grid_affine())


def bad_affine(root: Path) -> Path:
    image, label = phantom()
    save(root / "scan.nii.gz", image, grid_affine())
    return save(root / "scan_label.nii.gz", label, grid_affine(origin=(-5.0, 20.0, -5.0)))


def bad_nan(root: Path) -> Path:
    image = phantom()[0]
    image[3, 4, 2] = np.nan
    return save(root / "scan.nii.gz", image, grid_affine())


def bad_inf(root: Path) -> Path:
    image = phantom()[0]
    image[1, 1, 1] = np.inf
    return save(root / "scan.nii.gz", image, grid_affine())


def bad_constant(root: Path) -> Path:
    return save(root / "scan.nii.gz", np.full((8, 8, 4), 7, np.int16), grid_affine())


def bad_label_values(root: Path) -> Path:
    make_decathlon(root, label_value=5)
    return root / "labelsTr" / "prostate_01.nii.gz"


def bad_fractional_label(root: Path) -> Path:
    image, label = phantom()
    save(root / "scan.nii.gz", image, grid_affine())
    return save(root / "scan_seg.nii.gz", label.astype(np.float32) * 0.5, grid_affine())


def bad_plain_4d(root: Path) -> Path:
    return save(root / "cine.nii.gz", np.stack([phantom()[0]] * 3, axis=-1), grid_affine())


def bad_missing_listed(root: Path) -> Path:
    make_decathlon(root)
    missing = root / "labelsTr" / "prostate_01.nii.gz"
    missing.unlink()
    return missing


def bad_dataset_json(root: Path) -> Path:
    make_decathlon(root)
    (root / "dataset.json").write_text("{not json")
    return root / "dataset.json"


BAD_INPUTS = {
    "truncated .nii.gz": (bad_truncated, {}, "truncated"),
    "not a NIfTI": (bad_garbage, {}, "NIfTI"),
    "label shape mismatch": (bad_shape, {}, "shape"),
    "label affine mismatch": (bad_affine, {}, "affine"),
    "NaN intensities": (bad_nan, {}, "NaN"),
    "Inf intensities": (bad_inf, {}, "Inf"),
    "constant image": (bad_constant, {}, "constant"),
    "label values not in dataset.json": (bad_label_values, {}, r"\[5\]"),
    "non-integer label": (bad_fractional_label, {}, "non-integer"),
    "plain 4D without channel": (bad_plain_4d, {}, "channel"),
    "fewer slices than partitions": (lambda r: save(r / "thin.nii.gz", phantom()[0][:, :, :3], grid_affine()),
                                     {"n_partitions": 4}, "3 slices"),
    "listed file missing": (bad_missing_listed, {}, "missing"),
    "broken dataset.json": (bad_dataset_json, {}, "dataset.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_data_error_naming_the_file(tmp_path, case):
    build, kwargs, problem = BAD_INPUTS[case]
    root = tmp_path / "data"
    named_file = build(root)
    with pytest.raises(DataError, match=problem) as info:
        load_volumes(root, size=16, **kwargs)
    assert str(named_file) in str(info.value)


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_volumes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._debris.nii.gz").write_bytes(b"\x00")
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}.*empty"):
        load_volumes(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no NIfTI"):
        load_volumes(tmp_path / "other")


def test_errors_skip_warns_and_keeps_the_good_volumes(tmp_path):
    make_plain(tmp_path / "mixed")
    bad_nan(tmp_path / "mixed")
    with pytest.warns(UserWarning, match=r"scan\.nii\.gz"):
        volumes = load_volumes(tmp_path / "mixed", size=16, errors="skip")
    assert [v.name for v in volumes] == ["case0", "case1", "case2", "unlabelled"]


def test_nothing_is_written_into_the_data_folders(tmp_path):
    data = tmp_path / "data"
    make_decathlon(data / "decathlon")
    make_acdc_patient(data / "acdc" / "training" / "patient001")
    make_plain(data / "plain")
    bad_truncated(data / "broken")
    before = snapshot(data)
    for layout in ("decathlon", "acdc", "plain"):
        assert load_volumes(data / layout, size=24)
    with pytest.raises(DataError):
        load_volumes(data / "broken")
    assert snapshot(data) == before


def test_summarize_reports_counts_spacing_and_classes(tmp_path):
    volumes = load_volumes(make_plain(tmp_path / "plain"), spacing=1.0, size=(20, 20))
    text = summarize(volumes)
    assert "4 (3 labelled)" in text and "20 x 20" in text and "7 .. 7" in text
    assert "3: " in text and "%" in text
    assert summarize([]) == "0 volumes"


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.7, 2.0, 3.3, 5.0])
def test_resampling_keeps_positions_for_any_factor(factor):
    """A linear ramp stays a ramp: block averaging, smoothing and interpolation put every output pixel at its
    physical position (centred field of view), and labels land where the image does."""
    from glcl_core.data.preprocess import resample_image, resample_label, sample_positions

    spacing_in, n_in = 0.5, 120
    ramp = np.arange(n_in, dtype=np.float32) * spacing_in  # mm, along the columns
    volume = np.broadcast_to(ramp, (2, 30, n_in))
    spacing_out = spacing_in * factor
    out = resample_image(volume, (spacing_in, spacing_in), (spacing_out, spacing_out), None, (0.0, 1000.0))
    positions, _ = sample_positions(n_in, spacing_in, spacing_out, None)
    expected = positions * spacing_in / 1000.0
    interior = slice(3, -3)
    assert np.allclose(out[0, out.shape[1] // 2, interior], expected[interior], atol=1e-5)
    label = np.broadcast_to((np.arange(n_in) >= 60).astype(np.uint8), (2, 30, n_in))
    resampled = resample_label(label, (spacing_in, spacing_in), (spacing_out, spacing_out), None)
    edge_mm = positions[np.argmax(resampled[0, 0])] * spacing_in
    assert abs(edge_mm - 30.0) <= spacing_out / 2 + 1e-6


# ----------------------------------------------------------------------------------------------- native grid


@pytest.mark.parametrize("n_in,s_in,s_out,n_out", [(40, 1.0, 2.0, 24), (50, 1.0, 2.0, 24), (37, 1.3, 2.1, 16),
                                                   (30, 1.0, 1.0, 12), (30, 1.0, 1.0, 41), (64, 0.7, 0.5, None)])
def test_native_grid_matches_sample_positions_and_nearest_mapping(n_in, s_in, s_out, n_out):
    """NativeGrid inverts the preprocessing layout: pixel centres agree with sample_positions, and the "nearest"
    mapping back picks, for every native pixel inside the field of view, the preprocessed pixel whose centre is
    closest (found by brute force from the forward positions); pixels cropped away become background."""
    from glcl_core.data.preprocess import native_grid, sample_positions, scores_to_native

    positions, _ = sample_positions(n_in, s_in, s_out, n_out)
    grid = native_grid((n_in, 9), (s_in, 1.0), (s_out, 1.0), None if n_out is None else (n_out, 9))
    assert grid.resampled_shape[0] == positions.size and grid.shape == (n_in, 9)
    assert np.allclose(grid.origin[0] + grid.step[0] * np.arange(positions.size), positions, atol=1e-9)
    n = positions.size
    scores = np.zeros((1, n + 1, n, 9), dtype=np.float32)  # class j + 1 marks preprocessed row j
    scores[0, np.arange(n) + 1, np.arange(n), :] = 1.0
    back = scores_to_native(scores, grid, "nearest")[0, :, 4]
    distance = np.abs(np.arange(n_in)[:, None] - positions[None, :])  # native pixel x preprocessed centre
    covered = distance.min(axis=1) <= grid.step[0] / 2 + 1e-9
    assert np.all(back[covered] > 0)
    chosen = distance[np.flatnonzero(covered), back[covered] - 1]  # a tie (midway pixel) may go either way
    assert np.allclose(chosen, distance[covered].min(axis=1), atol=1e-9)
    assert np.all(back[~covered] == 0)


def write_hand_volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A case on a 40 x 50 in-plane grid at 1 mm (canonical orientation), 3 slices of 5 mm: class 1 a 20 x 30
    rectangle, class 2 a 4 x 10 block plus the whole first column (cropped away at 2 mm / 24 x 24).
    Returns the canonical label and image ``(3, 40, 50)``."""
    from glcl_core.data.orientation import reorient

    label = np.zeros((3, 40, 50), dtype=np.uint8)
    label[:, 10:30, 11:41] = 1
    label[:, 32:36, 21:31] = 2
    label[:, :, 0] = 2
    rows = np.arange(40, dtype=np.float32)[None, :, None]
    image = 40 * label + 10 * np.arange(3, dtype=np.float32)[:, None, None] + 0.1 * rows + np.zeros_like(label)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    orientation = canonical_orientation(affine)
    stored_label, stored_image = np.zeros((50, 40, 3), np.uint8), np.zeros((50, 40, 3), np.float32)
    reorient(stored_label, orientation)[...] = label  # reorient gives a view: this stores the canonical arrays
    reorient(stored_image, orientation)[...] = image
    save(folder / "hand.nii.gz", stored_image, affine)
    save(folder / "hand_seg.nii.gz", stored_label, affine)
    return label, image


def test_loader_keeps_native_grid_and_label(tmp_path, monkeypatch):
    """The loader records the in-plane map and the canonical native label; one-hot scores of the preprocessed label
    mapped back give the native label wherever preprocessing kept it; a large label is re-read from its file."""
    from glcl_core.data import cases
    from glcl_core.data.preprocess import scores_to_native

    label, _ = write_hand_volume(tmp_path / "h")
    volume = load_volumes(tmp_path / "h", spacing=2.0, size=24)[0]
    grid = volume.meta["native_grid"]
    assert volume.label.shape == (3, 24, 24) and grid.shape == (40, 50) and grid.resampled_shape == (24, 24)
    assert grid.step == (2.0, 2.0) and grid.origin == (-3.5, 1.5)
    assert np.array_equal(volume.meta["native_label"], label) and np.array_equal(cases.native_label(volume), label)
    assert volume.label.sum() == 3 * (150 * 1 + 10 * 2)  # the rectangle and the block survive, the column not
    onehot = np.eye(3, dtype=np.float32)[volume.label].transpose(0, 3, 1, 2)
    for interpolation in ("linear", "nearest"):
        back = scores_to_native(onehot, grid, interpolation)
        expected = label.copy()
        expected[:, :, 0] = 0  # cropped away: background
        assert np.array_equal(back, expected), interpolation

    monkeypatch.setattr(cases, "NATIVE_LABEL_MAX_VOXELS", 10)
    large = load_volumes(tmp_path / "h", spacing=2.0, size=24)[0]
    assert "native_label" not in large.meta and np.array_equal(cases.native_label(large), label)
    (tmp_path / "h" / "hand_seg.nii.gz").unlink()
    with pytest.warns(UserWarning, match="cannot re-read"):
        assert cases.native_label(large) is None


def test_native_grid_of_any_storage_order_and_acdc(tmp_path):
    """Native labels are in canonical orientation whatever the storage order: they equal the label loaded with no
    resampling (ACDC oblique short axis and a permuted/flipped plain case)."""
    from glcl_core.data.cases import native_label

    make_acdc_patient(tmp_path / "acdc" / "patient001")
    image, label = phantom()
    stored, affine = reorder(label, grid_affine(), [[1, -1], [2, 1], [0, -1]])
    save(tmp_path / "p" / "case.nii.gz", reorder(image, grid_affine(), [[1, -1], [2, 1], [0, -1]])[0], affine)
    save(tmp_path / "p" / "case_seg.nii.gz", stored, affine)
    for folder in (tmp_path / "acdc", tmp_path / "p"):
        resampled = load_volumes(folder, spacing=1.1, size=(16, 20))
        full = load_volumes(folder, **FAST)
        for v, f in zip(resampled, full):
            assert np.array_equal(native_label(v), f.label) and v.meta["native_grid"].shape == f.label.shape[1:]


def test_evaluate_native_and_resampled_dice_of_a_known_prediction(tmp_path):
    """Dice of a known prediction on the hand-made volume, by hand. The prediction is the preprocessed label with a
    3 x 4 block of class 1 set to 0 (6 x 8 native pixels). Per slice, native: class 1 600 voxels vs 552 predicted,
    class 2 80 (40 of them in the column cropped away) vs 40; preprocessed grid: class 1 150 vs 138, class 2 10
    vs 10. A hand-built volume without meta falls back to the preprocessed grid and says so."""
    import torch

    from glcl_core.data import Volume
    from glcl_core.train import evaluation

    write_hand_volume(tmp_path / "h")
    volume = load_volumes(tmp_path / "h", spacing=2.0, size=24)[0]
    pred = volume.label.copy()
    assert np.all(pred[:, 9:12, 8:12] == 1)
    pred[:, 9:12, 8:12] = 0

    class FixedPrediction(torch.nn.Module):
        """Logits 10 x one-hot of ``pred`` for each input slice (found by its image)."""

        n_classes = 3

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))
            self.images, self.pred = torch.from_numpy(volume.image), torch.from_numpy(pred)

        def forward(self, x):
            idx = [int((self.images == s[0]).flatten(1).all(1).nonzero()[0]) for s in x]
            return torch.nn.functional.one_hot(self.pred[idx], 3).permute(0, 3, 1, 2).float() * 10

    model = FixedPrediction()
    bare = Volume("bare", volume.image, volume.label, volume.spacing)  # no meta: hand-built
    native = evaluation.evaluate(model, [volume, bare])
    expected = {("hand", "1"): 2 * 552 / 1152, ("hand", "2"): 2 * 40 / 120,
                ("bare", "1"): 2 * 138 / 288, ("bare", "2"): 1.0}
    for r in native.to_dict("records"):
        assert r["dice"] == pytest.approx(expected[(r["volume"], r["class"])], abs=1e-12)
        assert r["resolution"] == ("native" if r["volume"] == "hand" else "resampled")
    assert native.attrs["resolution"] == "mixed"
    resampled = evaluation.evaluate(model, [volume], resolution="resampled")
    assert list(resampled["dice"]) == pytest.approx([2 * 138 / 288, 1.0])
    assert resampled.attrs["resolution"] == "resampled"
    assert set(resampled["resolution"]) == {"resampled"}
    nearest = evaluation.evaluate(model, [volume], interpolation="nearest")
    assert list(nearest["dice"]) == pytest.approx([2 * 552 / 1152, 2 * 40 / 120])
    assert evaluation.native_prediction(model, volume).shape == (3, 40, 50)
    with pytest.raises(ValueError, match="native_grid"):
        evaluation.native_prediction(model, bare)
    with pytest.raises(ValueError, match="resolution"):
        evaluation.evaluate(model, [volume], resolution="original")


def test_split_keeps_each_acdc_patient_on_one_side(tmp_path):
    """ED and ES of one patient are one subject: never one frame in test and the other in the pool."""
    from glcl_core.data.split import split_volumes

    root = tmp_path / "ACDC"
    for i in range(5):
        make_acdc_patient(root / f"patient{i:03d}")
    volumes = load_volumes(root, size=16)
    assert len(volumes) == 10
    for seed in range(6):
        split = split_volumes(volumes, n_test=2, n_val=1, seed=seed)
        sides = [{v.meta["subject"] for v in part} for part in (split.pool, split.val, split.test)]
        assert [len(s) for s in sides] == [2, 1, 2]  # counts are subjects
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert [len(part) for part in (split.pool, split.val, split.test)] == [4, 2, 4]
    with pytest.raises(ValueError, match=r"5 subjects \(10 volumes\) cannot be split into 4 test, 1 validation"):
        split_volumes(volumes, n_test=4, n_val=1)


def test_split_of_one_volume_per_subject_is_the_plain_volume_split():
    """Without repeated subjects the split is a permutation of the volumes by the seed, in input order per set."""
    from glcl_core.data.split import split_volumes
    from glcl_core.data.volume import Volume

    # labelled: validation and test take labelled volumes only (tests/test_data_bad_input.py)
    volumes = [Volume(f"v{i}", np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.int64), (1.0, 1.0, 1.0))
               for i in range(9)]
    for seed in (0, 3):
        order = np.random.default_rng(seed).permutation(9)
        split = split_volumes(volumes, n_test=3, n_val=2, seed=seed)
        assert [v.name for v in split.test] == [f"v{i}" for i in sorted(order[:3])]
        assert [v.name for v in split.val] == [f"v{i}" for i in sorted(order[3:5])]
        assert [v.name for v in split.pool] == [f"v{i}" for i in sorted(order[5:])]
