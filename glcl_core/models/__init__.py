"""The networks: the GLCL U-Net, the projection heads g1 (global) and g2 (local), partial weight loading and
parameter counting.

One module per part: ``unet`` (encoder, decoder, segmentation head), ``heads`` (:class:`GlobalHead`,
:class:`LocalHead`), ``loading`` (:func:`load_pretrained`, :func:`count_parameters`). Every public name is
re-exported here: ``from glcl_core.models import UNet, GlobalHead, LocalHead, count_parameters``.
"""
from glcl_core.models.heads import LOCAL_PROJECTIONS, GlobalHead, LocalHead
from glcl_core.models.loading import LoadSummary, count_parameters, load_pretrained
from glcl_core.models.unet import NORMS, ConvNormReLU, DecoderBlock, DoubleConv, Encoder, UNet

__all__ = [
    "NORMS", "ConvNormReLU", "DoubleConv", "Encoder", "DecoderBlock", "UNet",
    "GlobalHead", "LOCAL_PROJECTIONS", "LocalHead",
    "LoadSummary", "load_pretrained", "count_parameters",
]
