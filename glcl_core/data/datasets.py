"""The registry of public data sets that ``fetch`` knows, and :class:`FetchError`, the one error it raises.

:data:`DATASETS` maps a name (``Task05_Prostate``, ``acdc`` ...) to a :class:`DatasetEntry`: what it is, its size,
licence and citation (shown before every download), the archive's URL and published MD5, or where to register when
there is no direct download. :func:`source_url` picks the address (``url=``, else ``$GLCL_FETCH_BASE_URL``, else
the entry's own). Downloading: :mod:`glcl_core.data.download`; unpacking: :mod:`glcl_core.data.archive`; the
whole procedure: :func:`glcl_core.data.fetching.fetch`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from glcl_core.data.volume import DataError

BASE_URL_ENV = "GLCL_FETCH_BASE_URL"


class FetchError(DataError):
    """A data set could not be fetched. The message is one line saying what to do."""


@dataclass(frozen=True)
class DatasetEntry:
    """One data set of the registry.

    Attributes:
        name: the registry key, also the folder name inside the archive and in ``root`` (``Task05_Prostate``).
        description: what it is, one line.
        size: approximate download size, as text (``"~229 MB (approx.)"``).
        licence / citation: shown before every download.
        url / md5: the archive and its published MD5; None when the data set cannot be downloaded directly.
        register: where to register, for data sets without a direct download.
        layout: what folder to pass to ``--data`` / ``load_volumes`` once the data are there.
    """

    name: str
    description: str
    size: str
    licence: str
    citation: str
    url: str | None = None
    md5: str | None = None
    register: str | None = None
    layout: str = "the task folder holding dataset.json, imagesTr/, labelsTr/"

    @property
    def downloadable(self) -> bool:
        return bool(self.url and self.md5)

    @property
    def archive_name(self) -> str:
        return f"{self.name}.tar"


MSD_LICENCE = "CC-BY-SA 4.0"
MSD_CITATION = ("Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 13:4128 (2022); "
                "Simpson et al., A large annotated medical image dataset for the development and evaluation of "
                "segmentation algorithms, arXiv:1902.09063 (2019)")

# URLs and MD5s: MONAI, monai/apps/datasets.py, DecathlonDataset.resource and DecathlonDataset.md5 (read at
# Project-MONAI/MONAI commit d388d1c6fec8cb3a0eebee5b5a0b9776ca59ca83, 2025-06-13; unchanged since at least
# 01eebcf3). Sizes are approximate and were not checked against the server (no network where this was written);
# case counts from the MSD paper (Simpson et al. 2019).
DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            name="Task05_Prostate",
            description="MSD prostate MRI (the GLCL paper's set): 32 labelled T2+ADC volumes (T2 is channel 0), "
                        "peripheral and transition zones",
            size="~229 MB (approx.)", licence=MSD_LICENCE, citation=MSD_CITATION,
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar",
            md5="35138f08b1efaef89d7424d2bcc928db",
            layout="the task folder holding dataset.json, imagesTr/, labelsTr/ (use channel 0 = T2)",
        ),
        DatasetEntry(
            name="Task02_Heart",
            description="MSD cardiac MRI: 20 labelled mono-modal volumes, left atrium",
            size="~435 MB (approx.)", licence=MSD_LICENCE, citation=MSD_CITATION,
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task02_Heart.tar",
            md5="06ee59366e1e5124267b774dbd654057",
        ),
        DatasetEntry(
            name="Task04_Hippocampus",
            description="MSD brain MRI crops: 263 labelled small volumes, hippocampus head and body",
            size="~27 MB (approx.)", licence=MSD_LICENCE, citation=MSD_CITATION,
            url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
            md5="9d24dba78a72977dbd1d2e110310f31b",
        ),
        DatasetEntry(
            name="acdc",
            description="ACDC cine cardiac MRI: 100 training + 50 test patients, ED/ES frames labelled "
                        "(RV, myocardium, LV)",
            size="-", licence="registration required (terms on the challenge page)",
            citation="Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
                     "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 37(11):2514-2525 (2018)",
            register="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
            layout="the folder holding patientXXX/ (e.g. training/patient001/ with patient001_frameYY.nii.gz, "
                   "patient001_frameYY_gt.nii.gz and Info.cfg; up to three folders down)",
        ),
    )
}


# ----------------------------------------------------------------------------------------------- registry


def is_known(name: object) -> bool:
    """Whether ``name`` names a data set of :data:`DATASETS` (case-insensitive), i.e. something ``fetch`` can get."""
    return str(name).strip().lower() in {key.lower() for key in DATASETS}


def lookup(name: str, registry: Mapping[str, DatasetEntry] | None = None) -> DatasetEntry:
    """The entry called ``name`` (case-insensitive) in ``registry`` (added to / overriding :data:`DATASETS`)."""
    known = {**DATASETS, **(registry or {})}
    by_lower = {key.lower(): entry for key, entry in known.items()}
    entry = by_lower.get(str(name).strip().lower())
    if entry is None:
        raise FetchError(f"unknown data set {name!r}; known: {', '.join(known)}")
    return entry


def datasets_table(registry: Mapping[str, DatasetEntry] | None = None) -> str:
    """A text table of the known data sets: name, size, licence, what it is."""
    rows = [("name", "size", "licence", "what it is")]
    rows += [(e.name, e.size, "registration required" if e.register else e.licence, e.description)
             for e in {**DATASETS, **(registry or {})}.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


def registration_message(entry: DatasetEntry) -> str:
    return (f"{entry.name} cannot be downloaded automatically: register at {entry.register}, download it there, "
            f"unpack it anywhere and pass {entry.layout} to --data (or load_volumes)")


def describe(entry: DatasetEntry, url: str) -> str:
    """What is about to be downloaded: shown before every download."""
    return "\n".join([
        f"data set : {entry.name} - {entry.description}",
        f"size     : {entry.size}",
        f"licence  : {entry.licence}",
        f"cite     : {entry.citation}",
        f"from     : {url}",
    ])


def source_url(entry: DatasetEntry, url: str | None = None) -> str:
    """``url`` if given, else ``$GLCL_FETCH_BASE_URL/<archive>`` if set, else the entry's own URL."""
    if url:
        return url
    base = os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{entry.archive_name}"
    assert entry.url is not None
    return entry.url

