"""The exercise checks: they pass on a correct plain-PyTorch answer and fail, naming the first mismatch, on a wrong
one."""
from __future__ import annotations

import torch

from glcl_core import exercises as ex


def gd_masks(image, volume, partition, position):
    """G^D written out: positives are the other view and same-partition slices of other volumes."""
    n = len(image)
    others = ~torch.eye(n, dtype=torch.bool)
    same_image = (image[:, None] == image[None, :]) & others
    same_partition = partition[:, None] == partition[None, :]
    other_volume = volume[:, None] != volume[None, :]
    return same_image | (same_partition & other_volume), ~same_partition


def gd_minus_masks(image, volume, partition, position):
    n = len(image)
    same_image = (image[:, None] == image[None, :]) & ~torch.eye(n, dtype=torch.bool)
    return same_image, partition[:, None] != partition[None, :]


def pcl_masks(image, volume, partition, position, threshold=0.1):
    n = len(position)
    others = ~torch.eye(n, dtype=torch.bool)
    return ((position[:, None] - position[None, :]).abs() < threshold) & others, others


def info_nce(z, positives, negatives, temperature):
    z = torch.nn.functional.normalize(z, dim=1)
    logits = z @ z.T / temperature
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool)
    losses = []
    for i in range(n):
        denominator = negatives[i] & ~eye[i]
        for p in torch.nonzero(positives[i] & ~eye[i]).flatten():
            keys = denominator.clone()
            keys[p] = True
            losses.append(torch.logsumexp(logits[i][keys], 0) - logits[i, p])
    return torch.stack(losses).mean()


def lr_masks(image, n_regions):
    b, t = len(image), n_regions
    q = torch.arange(2 * b * t)
    slice_, region = q // (2 * t), q % t
    same_slice = slice_[:, None] == slice_[None, :]
    same_region = region[:, None] == region[None, :]
    others = ~torch.eye(len(q), dtype=torch.bool)
    return same_slice & same_region & others, same_slice & ~same_region


def test_global_mask_check_passes_on_answers_and_names_the_first_mismatch(capsys):
    assert ex.check_global_masks(gd_masks, "GD")
    assert "PASS (GD)" in capsys.readouterr().out
    assert ex.check_global_masks(gd_minus_masks, "GD-")
    assert ex.check_global_masks(pcl_masks, "PCL", threshold=0.1)
    result = ex.check_global_masks(gd_minus_masks, "GD")  # G^D- masks passed as G^D
    assert not result and result.message.startswith("FAIL (GD")
    assert "positives[" in result.message and "should be True, is False" in result.message
    assert "partition" in result.message and "volume" in result.message
    wrong_pcl = ex.check_global_masks(lambda *m: pcl_masks(*m, threshold=0.2), "PCL", threshold=0.1, quiet=True)
    assert not wrong_pcl and "position" in wrong_pcl.message
    shape = ex.check_global_masks(lambda i, v, p, q: (torch.zeros(3, 3, dtype=torch.bool),) * 2, "GR", quiet=True)
    assert not shape and "bool tensor" in shape.message


def test_info_nce_check():
    assert ex.check_info_nce(info_nce, quiet=True)
    wrong = ex.check_info_nce(lambda z, p, n, t: info_nce(z, p, n, 2 * t), quiet=True)  # temperature slip
    assert not wrong and "expected" in wrong.message
    raising = ex.check_info_nce(lambda z, p, n, t: 1 / 0, quiet=True)
    assert not raising and "ZeroDivisionError" in raising.message
    # the denominator must not count the positive twice where it is also a negative (G^R, PCL)
    def positive_twice(z, positives, negatives, temperature):
        z = torch.nn.functional.normalize(z, dim=1)
        logits = z @ z.T / temperature
        eye = torch.eye(len(z), dtype=torch.bool)
        terms = [torch.log(logits[i][negatives[i] & ~eye[i]].exp().sum() + logits[i, p].exp()) - logits[i, p]
                 for i in range(len(z)) for p in torch.nonzero(positives[i] & ~eye[i]).flatten()]
        return torch.stack(terms).mean()
    assert not ex.check_info_nce(positive_twice, quiet=True)


def test_local_mask_check():
    assert ex.check_local_masks(lr_masks, quiet=True)
    def across_slices(image, n_regions):  # negatives from every slice: not L^R's
        pos, neg = lr_masks(image, n_regions)
        q = torch.arange(len(pos))
        return pos, (q % n_regions)[:, None] != (q % n_regions)[None, :]
    wrong = ex.check_local_masks(across_slices, quiet=True)
    assert not wrong and "negatives[" in wrong.message and "slice" in wrong.message
