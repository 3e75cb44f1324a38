"""glcl_core: global and local contrastive pre-training (Chaitanya et al. 2020) and positional contrastive
learning (Zeng et al. 2021) for volumetric medical image segmentation with few labels."""

__version__ = "0.1.0"

# GitHub slug of this repository: the Colab badges and install cells of the chapters point here
# (scripts/chapters.py writes it into every chapter's opening).
REPOSITORY = "glcl-book/glcl-book"
