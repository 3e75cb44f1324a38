"""The data layer: volumes read from user folders (Decathlon, ACDC, plain NIfTI) or the embedded ICBM152 set.

``load_volumes(path)`` gives a list of :class:`Volume` (``image (Z, H, W) float32`` in [0, 1], ``label`` int64 or
None), in a canonical orientation, resampled in-plane and cropped/padded to one size. ``embedded_dataset()`` builds
(once) and returns the path of the embedded pseudo-subject set. Problems with the input raise :class:`DataError`
naming the file. ``fetch(name)`` downloads, verifies and unpacks a public data set (:data:`DATASETS`, e.g. the
Decathlon's ``Task05_Prostate``) into the cache and returns the folder to pass to ``load_volumes``.
"""
from glcl_core.data.cases import Case, load_case
from glcl_core.data.datasets import DATASETS, DatasetEntry, FetchError
from glcl_core.data.embedded import embedded_dataset
from glcl_core.data.fetching import fetch
from glcl_core.data.io import detect_layout, find_cases, load_volumes, summarize
from glcl_core.data.orientation import Orientation, canonical_orientation
from glcl_core.data.presets import GeneratorParams
from glcl_core.data.volume import DataError, Volume

__all__ = [
    "DATASETS",
    "Case",
    "DataError",
    "DatasetEntry",
    "FetchError",
    "GeneratorParams",
    "Orientation",
    "Volume",
    "canonical_orientation",
    "detect_layout",
    "embedded_dataset",
    "fetch",
    "find_cases",
    "load_case",
    "load_volumes",
    "summarize",
]
