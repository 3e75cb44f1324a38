"""Bad inputs give one DataError naming the file (or folder, or dataset.json entry) and the problem, and
``errors="skip"`` skips them with a warning naming the file; nnU-Net v2 data sets are read; unlabelled volumes stay
out of validation and test; the number of classes comes from the data. Tiny NIfTI files are written here."""
from __future__ import annotations

import builtins
import json
import os
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glcl_core.data import DataError, Volume, load_volumes
from glcl_core.data import decathlon, io, nifti

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads files whatever their mode


def save(path: Path, array: np.ndarray, spacing=(1.0, 1.2, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def scan(shape=(18, 14, 7), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An image with some structure and a label with classes 0..2."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[2:9, 3:10] = 1
    label[10:15, 2:6] = 2
    image = (100 + 50 * label + rng.normal(0, 5, shape)).astype(np.float32)
    return image, label


def good_case(folder: Path, name: str = "good", seed: int = 0) -> Path:
    image, label = scan(seed=seed)
    save(folder / f"{name}_seg.nii.gz", label)
    return save(folder / f"{name}.nii.gz", image)


def only_message_lines(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, f"one line expected: {text!r}"
    return text


def skipped_warnings(record, path: Path) -> list[str]:
    return [str(w.message) for w in record if str(path) in str(w.message)]


# ----------------------------------------------------------------------------------------------- thin slabs


def thin_slab(folder: Path) -> Path:
    """Two slices 0.5 mm apart under 1 mm pixels: the coarsest axis is in-plane, the slab has 2 voxels in-plane."""
    return save(folder / "slab.nii.gz", scan(shape=(24, 24, 2))[0], spacing=(1.0, 1.0, 0.5))


def extreme_inplane(folder: Path) -> Path:
    """0.0001 mm pixels along x: the in-plane field of view (1.6 um) is less than one output pixel."""
    return save(folder / "microns.nii.gz", scan(shape=(16, 16, 8))[0], spacing=(1e-4, 1.0, 3.0))


@pytest.mark.parametrize("build, problem", [(thin_slab, "thin slab"), (extreme_inplane, "field of view")])
@pytest.mark.parametrize("options", [{}, {"spacing": 2.5, "size": 96}, {"spacing": None, "size": None}])
def test_thin_slab_and_extreme_inplane_spacing_are_data_errors(tmp_path, build, problem, options):
    """Both used to end in an IndexError inside the resampling (block means over more pixels than there are)."""
    bad = build(tmp_path / "d")
    if build is extreme_inplane and options.get("spacing", "fit") is None:
        with pytest.warns(UserWarning, match="implausible voxel size"):  # no resampling: nothing to refuse
            assert load_volumes(tmp_path / "d", **options)
        return
    with pytest.raises(DataError, match=problem) as err:
        load_volumes(tmp_path / "d", **options)
    assert str(bad) in only_message_lines(err)


@pytest.mark.parametrize("build", [thin_slab, extreme_inplane])
def test_thin_slab_and_extreme_spacing_are_skipped_with_errors_skip(tmp_path, build):
    bad = build(tmp_path / "d")
    good_case(tmp_path / "d")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        volumes = load_volumes(tmp_path / "d", spacing=2.5, size=32, errors="skip")
    assert [v.name for v in volumes] == ["good"]
    assert any(m.startswith("skipped:") for m in skipped_warnings(record, bad))


def test_few_slices_along_the_slice_axis_are_named(tmp_path):
    bad = save(tmp_path / "d" / "two.nii.gz", scan(shape=(16, 16, 2))[0])
    assert load_volumes(tmp_path / "d", size=16)[0].n_slices == 2  # a 2-slice scan is still a scan
    with pytest.raises(DataError, match="2 slices, fewer than the 4 required") as err:
        load_volumes(tmp_path / "d", size=16, n_partitions=4)
    assert str(bad) in str(err.value)


def test_resampling_refuses_an_input_smaller_than_one_output_pixel():
    from glcl_core.data.preprocess import resample_image

    with pytest.raises(DataError, match=r"src\.nii: in-plane size 2 x 16"):
        resample_image(np.ones((3, 2, 16), np.float32), (0.5, 1.0), (2.5, 2.5), (8, 8), (0.0, 1.0), "src.nii")


# ----------------------------------------------------------------------------------------------- unreadable


def block_folder(monkeypatch, folder: Path) -> None:
    """What ``chmod 000 folder`` does for a user that is not root: it cannot be listed, nothing inside can be
    looked at or opened (the tests may run as root, where chmod does not block reads)."""
    folder = folder.absolute()
    inside = lambda p: folder in Path(p).absolute().parents
    denied = lambda p: PermissionError(13, "Permission denied", str(p))
    iterdir, stat, load, open_ = Path.iterdir, Path.stat, nifti.nib.load, builtins.open

    def fake_iterdir(self):
        if self.absolute() == folder or inside(self):
            raise denied(self)
        return iterdir(self)

    def fake_stat(self, *args, **kwargs):
        if inside(self):
            raise denied(self)
        return stat(self, *args, **kwargs)

    def fake_load(path, *args, **kwargs):
        if inside(path):
            raise denied(path)
        return load(path, *args, **kwargs)

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and inside(file):
            raise denied(file)
        return open_(file, *args, **kwargs)

    monkeypatch.setattr(Path, "iterdir", fake_iterdir)
    monkeypatch.setattr(Path, "stat", fake_stat)
    monkeypatch.setattr(nifti.nib, "load", fake_load)
    monkeypatch.setattr(builtins, "open", fake_open)


def block_file(monkeypatch, path: Path) -> None:
    """What ``chmod 000 file`` does for a user that is not root: opening the file fails (nibabel itself then
    reports "Could not read file"; the loader says why)."""
    open_ = builtins.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).absolute() == path.absolute():
            raise PermissionError(13, "Permission denied", str(file))
        return open_(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def chmod_blocks_reads(folder: Path) -> bool:
    """False for root (and other users with CAP_DAC_OVERRIDE): mode 000 does not stop them reading."""
    probe = folder / "probe"
    probe.write_bytes(b"x")
    os.chmod(probe, 0)
    try:
        with open(probe, "rb"):
            return False
    except PermissionError:
        return True
    finally:
        os.chmod(probe, 0o644)
        probe.unlink()


def test_unreadable_file_is_named_and_skippable(tmp_path, monkeypatch):
    good_case(tmp_path / "d")
    bad = good_case(tmp_path / "d", "locked", seed=1)
    block_file(monkeypatch, bad)
    with pytest.raises(DataError, match="Permission denied") as err:
        load_volumes(tmp_path / "d", size=16)
    assert str(bad) in only_message_lines(err)
    with pytest.warns(UserWarning, match=f"skipped: {bad}.*Permission denied"):
        volumes = load_volumes(tmp_path / "d", size=16, errors="skip")
    assert [v.name for v in volumes] == ["good"]


def test_unreadable_data_folder_is_named(tmp_path, monkeypatch):
    good_case(tmp_path / "d")
    block_folder(monkeypatch, tmp_path / "d")
    for errors in ("raise", "skip"):  # nothing to skip to: the data folder itself
        with pytest.raises(DataError, match="cannot list the folder.*Permission denied") as err:
            load_volumes(tmp_path / "d", size=16, errors=errors)
        assert str(tmp_path / "d") in only_message_lines(err)


def test_unreadable_acdc_patient_folder_is_named_and_skippable(tmp_path, monkeypatch):
    root = tmp_path / "acdc"
    for patient in ("patient001", "patient002"):
        folder = root / "training" / patient
        image, label = scan(seed=int(patient[-1]))
        for frame in (1, 3):
            save(folder / f"{patient}_frame{frame:02d}.nii.gz", image)
            save(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", label)
        (folder / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: NOR\n")
    blocked = root / "training" / "patient002"
    block_folder(monkeypatch, blocked)
    with pytest.raises(DataError, match="Permission denied") as err:
        load_volumes(root, size=16)
    assert str(blocked) in only_message_lines(err)
    with pytest.warns(UserWarning, match=f"skipped: {blocked}"):
        volumes = load_volumes(root, size=16, errors="skip")
    assert {v.meta["subject"] for v in volumes} == {"patient001"}


def test_unreadable_subfolder_of_a_plain_folder_only_warns(tmp_path, monkeypatch):
    """A folder searched for ACDC patients but not needed (e.g. lost+found) does not stop the loading."""
    good_case(tmp_path / "d")
    (tmp_path / "d" / "lost+found").mkdir()
    block_folder(monkeypatch, tmp_path / "d" / "lost+found")
    with pytest.warns(UserWarning, match="lost\\+found"):
        assert [v.name for v in load_volumes(tmp_path / "d", size=16)] == ["good"]


def test_chmod_000_file_and_folder(tmp_path):
    if AS_ROOT and not chmod_blocks_reads(tmp_path):
        pytest.skip("root reads files whatever their mode (the monkeypatched tests above cover the code path)")
    good_case(tmp_path / "d")
    bad = good_case(tmp_path / "d", "locked", seed=1)
    os.chmod(bad, 0)
    try:
        with pytest.raises(DataError, match="Permission denied") as err:
            load_volumes(tmp_path / "d", size=16)
        assert str(bad) in str(err.value)
        with pytest.warns(UserWarning, match=str(bad)):
            assert [v.name for v in load_volumes(tmp_path / "d", size=16, errors="skip")] == ["good"]
    finally:
        os.chmod(bad, 0o644)
    os.chmod(tmp_path / "d", 0)
    try:
        with pytest.raises(DataError, match="Permission denied") as err:
            load_volumes(tmp_path / "d", size=16)
        assert str(tmp_path / "d") in str(err.value)
    finally:
        os.chmod(tmp_path / "d", 0o755)


# ----------------------------------------------------------------------------------------------- dataset.json


def make_task(root: Path, n_cases: int = 3, channels: int = 1) -> Path:
    """An MSD (v1) task: a ``training`` list, labels {"0": "background", ...}."""
    training = []
    for i in range(n_cases):
        image, label = scan(seed=i)
        if channels > 1:
            image = np.stack([image + 10 * c for c in range(channels)], axis=-1)
        save(root / "imagesTr" / f"case_{i:02d}.nii.gz", image)
        save(root / "labelsTr" / f"case_{i:02d}.nii.gz", label)
        training.append({"image": f"./imagesTr/case_{i:02d}.nii.gz", "label": f"./labelsTr/case_{i:02d}.nii.gz"})
    meta = {"name": "Toy", "labels": {"0": "background", "1": "one", "2": "two"},
            "modality": {str(c): name for c, name in zip(range(channels), ["T2", "ADC", "DWI"])},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def set_training_entry(root: Path, index: int, entry) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][index] = entry
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("entry, problem", [
    ({"image": 5, "label": "./labelsTr/case_01.nii.gz"}, "'image' must be a path string, got int 5"),
    ({"image": "./imagesTr/case_01.nii.gz", "label": ["./labelsTr/case_01.nii.gz"]}, "'label' must be a path string"),
    ({"image": None}, "'image' must be a path string, got NoneType"),
    ({"image": "../outside.nii.gz"}, "'image' '../outside.nii.gz' points outside the data folder"),
    ({"image": "./imagesTr/../../outside.nii.gz"}, "points outside the data folder"),
    ({"image": "ABSOLUTE", "label": "./labelsTr/case_01.nii.gz"}, "points outside the data folder"),
    ({"image": "./imagesTr/case_01.nii.gz", "label": "../labels/../../x.nii.gz"}, "'label' .* points outside"),
])
def test_bad_dataset_json_entries_are_named_and_skippable(tmp_path, entry, problem):
    root = make_task(tmp_path / "task")
    save(tmp_path / "outside.nii.gz", scan()[0])  # exists, but outside the data folder
    if entry.get("image") == "ABSOLUTE":
        entry = dict(entry, image=str(tmp_path / "outside.nii.gz"))
    set_training_entry(root, 1, entry)
    with pytest.raises(DataError, match=problem) as err:
        load_volumes(root, size=16)
    text = only_message_lines(err)
    assert str(root / "dataset.json") in text and "training" in text
    with pytest.warns(UserWarning, match="skipped: .*dataset.json"):
        volumes = load_volumes(root, size=16, errors="skip")
    assert [v.name for v in volumes] == ["case_00", "case_02"]


def test_missing_listed_file_is_skippable(tmp_path):
    root = make_task(tmp_path / "task")
    (root / "imagesTr" / "case_01.nii.gz").unlink()
    with pytest.warns(UserWarning, match="case_01.nii.gz: listed in .* but missing"):
        assert [v.name for v in load_volumes(root, size=16, errors="skip")] == ["case_00", "case_02"]


def make_nnunet_v2(root: Path, n_cases: int = 3, channels: int = 2, regions: bool = False) -> Path:
    """nnU-Net v2: no training list, one file per channel (``case_0000``), labels name -> value."""
    for i in range(n_cases):
        image, label = scan(seed=i)
        for c in range(channels):
            save(root / "imagesTr" / f"pros_{i:03d}_{c:04d}.nii.gz", image + 100 * c)
        save(root / "labelsTr" / f"pros_{i:03d}.nii.gz", label)
    labels = {"background": 0, "PZ": 1, "TZ": 2}
    if regions:
        labels = {"background": 0, "whole": [1, 2], "TZ": 2}
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": labels, "numTraining": n_cases,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_v2_labels_and_channel_files_are_read(tmp_path):
    root = make_nnunet_v2(tmp_path / "Dataset005_Prostate")
    t2 = load_volumes(root, size=16)
    adc = load_volumes(root, size=16, channel=1)
    # one volume per case (not per channel file), so the two channels of a scan can never split across sets
    assert [v.name for v in t2] == ["pros_000", "pros_001", "pros_002"]
    assert [v.meta["subject"] for v in t2] == ["pros_000", "pros_001", "pros_002"]
    assert t2[0].source.endswith("pros_000_0000.nii.gz") and adc[0].source.endswith("pros_000_0001.nii.gz")
    assert t2[0].meta["channel"] == 0 and adc[0].meta["channel"] == 1
    assert t2[0].meta["labels"] == {0: "background", 1: "PZ", 2: "TZ"}
    assert all(v.label is not None and set(np.unique(v.label)) <= {0, 1, 2} for v in t2)
    assert "channel" in io.summarize(t2) and "T2" in io.summarize(t2)
    with pytest.raises(DataError, match=r"pros_000_NNNN: channel=2 has no file.*0: T2, 1: ADC.*--channel"):
        load_volumes(root, size=16, channel=2)
    # a label value not declared in the name -> value mapping is refused, naming the file
    label = scan()[1]
    label[0, 0, 0] = 7
    bad = save(root / "labelsTr" / "pros_001.nii.gz", label)
    with pytest.raises(DataError, match=r"\[7\] are not listed") as err:
        load_volumes(root, size=16)
    assert str(bad) in str(err.value)


def test_nnunet_v1_training_list_with_channel_files(tmp_path):
    """nnU-Net v1 lists ``imagesTr/case.nii.gz`` but stores ``case_0000.nii.gz``, ``case_0001.nii.gz``."""
    root = make_nnunet_v2(tmp_path / "Task005_Prostate")
    meta = {"labels": {"0": "background", "1": "PZ", "2": "TZ"}, "modality": {"0": "T2", "1": "ADC"},
            "training": [{"image": f"./imagesTr/pros_{i:03d}.nii.gz", "label": f"./labelsTr/pros_{i:03d}.nii.gz"}
                         for i in range(3)]}
    (root / "dataset.json").write_text(json.dumps(meta))
    adc = load_volumes(root, size=16, channel=1)
    assert [v.name for v in adc] == ["pros_000", "pros_001", "pros_002"]
    assert all(v.source.endswith("_0001.nii.gz") and v.label is not None for v in adc)
    for c in range(2):
        (root / "imagesTr" / f"pros_001_{c:04d}.nii.gz").unlink()
    with pytest.raises(DataError, match=r"pros_001.nii.gz: listed in .*dataset.json but missing"):
        load_volumes(root, size=16)


def test_nnunet_v2_regions_and_class_names(tmp_path):
    from glcl_core.experiment import class_names_of
    from glcl_core.train.config import make_config

    root = make_nnunet_v2(tmp_path / "v2", channels=1, regions=True)
    assert decathlon.label_names(json.loads((root / "dataset.json").read_text())) == {
        0: "background", 1: "whole", 2: "whole"}
    assert len(load_volumes(root, size=16)) == 3
    plain = make_nnunet_v2(tmp_path / "v2plain", channels=1)
    cfg = make_config("ci", data={"path": str(plain)}, model={"n_classes": 3})
    assert class_names_of(cfg) == ["background", "PZ", "TZ"]  # used to fail on int("background")
    msd = make_task(tmp_path / "msd")
    assert class_names_of(make_config("ci", data={"path": str(msd)}, model={"n_classes": 3})) == [
        "background", "one", "two"]


# ----------------------------------------------------------------------------------------------- not a folder


def test_device_fifo_and_files_are_not_data_folders(tmp_path, capsys):
    from glcl_core.cli import main

    with pytest.raises(DataError, match="/dev/null: not a data folder"):
        load_volumes("/dev/null")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # never opened: opening a pipe without a writer would block
    with pytest.raises(DataError, match="pipe: not a data folder"):
        load_volumes(fifo)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a NIfTI file"):
        load_volumes(text)
    nifti = good_case(tmp_path / "d")
    for path, kind in (("/dev/null", "a device"), (str(fifo), "a device"), (str(nifti), "a file"),
                       (str(text), "a file")):
        assert main(["data", "--data", path]) == 2
        err = capsys.readouterr().err
        assert f"--data {path}: is {kind}" in err and "data folder" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- memory limit


def huge_header(path: Path, shape=(20000, 20000, 20000)) -> Path:
    """A .nii whose header claims ``shape`` float32 (29 TiB) followed by a few bytes of data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).header.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    with open(path, "wb") as fh:
        header.write_to(fh)
        fh.write(b"\0" * 64)
    return path


def test_header_claiming_a_huge_array_is_refused_before_reading(tmp_path, monkeypatch):
    bad = huge_header(tmp_path / "d" / "huge.nii")
    monkeypatch.setattr(nifti, "read_slabs", lambda *a, **k: pytest.fail("voxels read before the size check"))
    with pytest.raises(DataError) as err:
        load_volumes(tmp_path / "d", size=16)
    text = only_message_lines(err)
    assert str(bad) in text and "(20000, 20000, 20000)" in text and "29.1 TiB" in text
    assert f"{20000 ** 3 * 4:,} bytes" in text and "GLCL_MAX_VOLUME_BYTES=" in text and "4.0 GiB limit" in text


def test_memory_limit_is_read_from_the_environment_and_skippable(tmp_path, monkeypatch):
    good_case(tmp_path / "d")
    bad = huge_header(tmp_path / "d" / "huge.nii", shape=(400, 400, 400))  # 244 MiB as float32
    monkeypatch.setenv("GLCL_MAX_VOLUME_BYTES", "1e8")
    with pytest.raises(DataError, match=r"244\.1 MiB .* over the 95\.4 MiB limit") as err:
        load_volumes(tmp_path / "d", size=16)
    assert str(bad) in str(err.value)
    with pytest.warns(UserWarning, match=f"skipped: {bad}"):
        assert [v.name for v in load_volumes(tmp_path / "d", size=16, errors="skip")] == ["good"]
    monkeypatch.setenv("GLCL_MAX_VOLUME_BYTES", "1e9")  # now the header passes; the data is simply not there
    with pytest.raises(DataError, match="truncated"):
        load_volumes(tmp_path / "d", size=16)
    monkeypatch.setenv("GLCL_MAX_VOLUME_BYTES", "lots")
    with pytest.raises(DataError, match="GLCL_MAX_VOLUME_BYTES='lots' is not a number"):
        load_volumes(tmp_path / "d", size=16)


# ----------------------------------------------------------------------------------------------- channels


def test_multichannel_without_a_channel_lists_the_channels_and_how_to_choose(tmp_path, capsys):
    from glcl_core.cli import build_parser, main

    image = np.stack([scan()[0] + 5 * c for c in range(3)], axis=-1)
    bad = save(tmp_path / "plain" / "cine.nii.gz", image)
    with pytest.raises(DataError) as err:
        load_volumes(tmp_path / "plain", size=16)
    text = only_message_lines(err)
    assert str(bad) in text and "3 channels" in text and "(0, 1, 2)" in text
    assert "channel=K" in text and "--channel K" in text
    assert load_volumes(tmp_path / "plain", size=16, channel=2)[0].meta["channel"] == 2

    task = make_task(tmp_path / "task", channels=2)  # Decathlon: channel 0 unless told
    with pytest.raises(DataError, match=r"channel=4 out of range.*\(0: T2, 1: ADC; .*--channel K"):
        load_volumes(task, size=16, channel=4)
    assert "0: T2 (of 0: T2, 1: ADC; choose with channel= / --channel)" in io.summarize(load_volumes(task, size=16))

    # nnU-Net style channel files in a plain images/ + labels/ folder: no default channel
    for c in range(2):
        save(tmp_path / "nn" / "images" / f"a_{c:04d}.nii.gz", scan()[0] + c)
    save(tmp_path / "nn" / "labels" / "a.nii.gz", scan()[1])
    with pytest.raises(DataError, match=r"a_NNNN: 2 channel files \(0, 1\) and none chosen; .*--channel K"):
        load_volumes(tmp_path / "nn", size=16)
    assert load_volumes(tmp_path / "nn", size=16, channel=1)[0].source.endswith("a_0001.nii.gz")

    # the CLI: `data` has --channel like the training commands, and the error is one line
    parser = build_parser()
    for command in (["data"], ["pretrain"], ["finetune"], ["evaluate", "--checkpoint", "x"], ["experiment"]):
        assert parser.parse_args(command + ["--channel", "1"]).channel == 1
    assert main(["data", "--data", str(tmp_path / "plain")]) == 2
    err_text = capsys.readouterr().err
    assert "--channel K" in err_text and err_text.count("\n") == 1
    assert main(["data", "--data", str(tmp_path / "plain"), "--channel", "1"]) == 0
    assert "channel" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- spacings


def test_implausible_spacings_warn_once_naming_the_file(tmp_path):
    far = save(tmp_path / "far" / "far.nii.gz", scan()[0], spacing=(1.0, 1.0, 1e4))
    flat = save(tmp_path / "flat" / "flat.nii.gz", scan()[0], spacing=(0.5, 0.5, 40.0))
    for path, reason in ((far, "1e\\+04 mm apart"), (flat, "80 times the in-plane spacing")):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            volumes = load_volumes(path.parent, size=16)
        assert len(volumes) == 1  # a warning, not an error
        messages = skipped_warnings(record, path)
        assert len(messages) == 1 and "implausible voxel size" in messages[0]
        assert re.search(reason, messages[0])
    save(tmp_path / "ok" / "ok.nii.gz", scan()[0], spacing=(0.6, 0.6, 10.0))  # cardiac-like: fine
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        load_volumes(tmp_path / "ok", size=16)


# ----------------------------------------------------------------------------------------------- split


def hand_volume(name: str, labelled: bool, subject: str | None = None) -> Volume:
    image = np.zeros((4, 6, 6), np.float32)
    label = np.zeros((4, 6, 6), np.int64) if labelled else None
    return Volume(name, image, label, (1.0, 1.0, 1.0), meta={"subject": subject or name})


def test_unlabelled_volumes_never_land_in_validation_or_test():
    from glcl_core.data.split import split_volumes

    volumes = [hand_volume(f"v{i}", labelled=i % 3 != 0) for i in range(12)]  # 4 unlabelled
    volumes += [hand_volume("p_ed", True, "p"), hand_volume("p_es", False, "p")]  # half-labelled subject
    for seed in range(8):
        split = split_volumes(volumes, n_test=4, n_val=2, seed=seed)
        held_out = split.val + split.test
        assert len(held_out) == 6 and all(v.label is not None for v in held_out)
        assert {"p_ed", "p_es"} <= {v.name for v in split.pool}
        assert len(split.pool) + len(held_out) == len(volumes)
    with pytest.raises(DataError, match=r"8 labelled subjects \(5 of 14 volumes have no label\), but 6 test \+ "
                                        r"3 validation = 9 labelled subjects are needed"):
        split_volumes(volumes, n_test=6, n_val=3)
    unlabelled = [hand_volume(f"u{i}", False) for i in range(5)]
    with pytest.raises(DataError, match=r"0 labelled volumes .*\(--n-test / --n-val\)"):
        split_volumes(unlabelled, n_test=1, n_val=1)
    assert len(split_volumes(unlabelled, n_test=0, n_val=0).pool) == 5  # pre-training only


def test_fully_labelled_split_is_unchanged():
    """Same permutation as before the labelled-only rule: the book's splits do not move."""
    from glcl_core.data.split import split_volumes

    volumes = [hand_volume(f"v{i}", True) for i in range(10)]
    for seed in (0, 1, 5):
        order = np.random.default_rng(seed).permutation(10)
        split = split_volumes(volumes, n_test=3, n_val=2, seed=seed)
        assert [v.name for v in split.test] == [f"v{i}" for i in sorted(order[:3])]
        assert [v.name for v in split.val] == [f"v{i}" for i in sorted(order[3:5])]
        assert [v.name for v in split.pool] == [f"v{i}" for i in sorted(order[5:])]


# ----------------------------------------------------------------------------------------------- classes


def test_number_of_classes_comes_from_the_data(tmp_path):
    from glcl_core.cli.checks import _config
    from glcl_core.cli.parser import build_parser

    task = make_task(tmp_path / "task")  # dataset.json declares 0, 1, 2
    plain = tmp_path / "plain"
    image, label = scan()
    label[label == 2] = 5  # label maps only: the largest value decides
    save(plain / "a.nii.gz", image)
    save(plain / "a_seg.nii.gz", label)
    good_case(plain, "b")
    save(tmp_path / "unlabelled" / "u.nii.gz", image)
    assert io.count_classes(task) == 3 and io.n_classes_of(load_volumes(task, size=16)) == 3
    assert io.count_classes(make_nnunet_v2(tmp_path / "v2")) == 3
    assert io.count_classes(plain) == 6 and io.n_classes_of(load_volumes(plain, size=16)) == 6
    assert io.count_classes(tmp_path / "unlabelled") is None

    def n_classes(*argv):
        return _config(build_parser().parse_args(["finetune", "--profile", "ci", *argv])).model.n_classes

    assert n_classes() == 4  # the embedded data set: its 4 classes, the configuration's default
    assert n_classes("--data", str(task)) == 3
    assert n_classes("--data", str(plain)) == 6
    assert n_classes("--data", str(task), "--n-classes", "7") == 7
    assert n_classes("--data", str(tmp_path / "unlabelled")) == 4  # nothing to count: the default
    # the Python API (and so the chapters' `data` parameter) counts the same way, unless n_classes is given
    from glcl_core.train.config import make_config

    assert make_config("ci", data={"path": str(task)}).model.n_classes == 3
    assert make_config("ci", data={"path": str(task)}, model={"n_classes": 5}).model.n_classes == 5


def test_classes_absent_from_the_data_have_no_dice_rows():
    import torch

    from glcl_core.train.evaluation import evaluate

    label = np.zeros((3, 8, 8), np.int64)
    label[:, 2:5, 2:5] = 1
    label[:, 6:, 6:] = 2
    volumes = [Volume(f"v{i}", np.random.default_rng(i).random((3, 8, 8), dtype=np.float32), label, (1.0,) * 3)
               for i in range(2)]

    class Perfect(torch.nn.Module):
        n_classes = 5

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):  # the label, one-hot over 5 classes, whatever the slices
            return torch.nn.functional.one_hot(torch.from_numpy(label[: len(x)]), 5).permute(0, 3, 1, 2).float()

    table = evaluate(Perfect(), volumes, class_names=["bg", "a", "b", "c", "d"])
    assert sorted(set(table["class"])) == ["a", "b"]  # classes 3 and 4 are in neither label nor prediction
    assert len(table) == 4 and not table["dice"].isna().any() and table["dice"].eq(1.0).all()
    assert table.attrs["resolution"] == "resampled"
