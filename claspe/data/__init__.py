"""Datasets: nnU-Net v2 raw datasets on disk, importers, synthetic and real-anatomy test data.

* :mod:`claspe.data.io` -- ``read_image``/``write_image`` (SimpleITK, atomic writes) and the axis
  convention: arrays in SimpleITK/nnU-Net array order ``(z, y, x)``, spacing in the same order.
* :mod:`claspe.data.dataset` -- ``load_dataset(raw_dir) -> DatasetInfo`` with validation.
* :mod:`claspe.data.synthetic` -- ``make_synthetic_dataset`` (organ / lesion / vessel, no download).
* :mod:`claspe.data.importers` -- ``import_nnunet_raw``, ``import_msd`` (Medical Segmentation Decathlon).
* :mod:`claspe.data.colin27` -- ``make_colin27_dataset`` from Debian's ``mricron-data`` (Colin27 + AAL).
"""

from claspe.data.colin27 import make_colin27_dataset
from claspe.data.dataset import DatasetInfo, foreground_ids, load_dataset, parse_labels, read_dataset_json
from claspe.data.importers import import_dataset, import_msd, import_nnunet_raw
from claspe.data.io import ImageData, ImageHeader, copy_file, read_header, read_image, write_image, write_json
from claspe.data.synthetic import make_synthetic_dataset

__all__ = [
    "DatasetInfo",
    "ImageData",
    "ImageHeader",
    "copy_file",
    "foreground_ids",
    "import_dataset",
    "import_msd",
    "import_nnunet_raw",
    "load_dataset",
    "make_colin27_dataset",
    "make_synthetic_dataset",
    "parse_labels",
    "read_dataset_json",
    "read_header",
    "read_image",
    "write_image",
    "write_json",
]
