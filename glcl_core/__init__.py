"""glcl_core: global and local contrastive pre-training (Chaitanya et al. 2020) and positional contrastive
learning (Zeng et al. 2021) for volumetric medical image segmentation with few labels."""

__version__ = "0.1.0"
