"""TinyImageNet-200 as a tfds builder that prepares from the official ``tiny-imagenet-200.zip``.

The zip is obtained by the user and placed in the manual directory. Splits: ``train`` (500 images a
class) and ``validation`` (the official labelled ``val`` set, 50 a class, which the papers use as their
test set). Images are 64×64; the few grayscale JPEGs are converted to RGB. Preparing needs no TensorFlow.
"""

from __future__ import annotations

import zipfile
from typing import Callable, Iterator

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

_ROOT = "tiny-imagenet-200/"


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """TinyImageNet-200 (200 classes, 64×64 RGB) from the official zip in the manual directory."""

    ARCHIVE = "tiny-imagenet-200.zip"
    URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train and the labelled val set; grayscale images converted to RGB."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {URL} and place {ARCHIVE} (unextracted) in the manual directory."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="TinyImageNet-200: 100,000 train and 10,000 labelled validation images, 64×64.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(64, 64, 3)),
                "label": tfds.features.ClassLabel(num_classes=200),
            }),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        archive = dl_manager.manual_dir / self.ARCHIVE
        with archive.open("rb") as file, zipfile.ZipFile(file) as zf:
            wnids = zf.read(_ROOT + "wnids.txt").decode().split()
            annotations = zf.read(_ROOT + "val/val_annotations.txt").decode().splitlines()
        self.info.features["label"].names = wnids
        val_labels = dict(line.split("\t")[:2] for line in annotations if line)
        return {"train": self._generate_examples(archive, "train/", lambda name: name.split("_")[0]),
                "validation": self._generate_examples(archive, "val/images/", val_labels.get)}

    def _generate_examples(self, archive: epath.Path, folder: str,
                           label_of: Callable[[str], str]) -> Iterator[tuple[str, dict]]:
        """The JPEGs under ``folder`` as (file name, example), labelled by ``label_of(file name)`` (a wnid)."""
        with archive.open("rb") as file, zipfile.ZipFile(file) as zf:
            for member in zf.namelist():
                name = member.rsplit("/", 1)[-1]
                if member.startswith(_ROOT + folder) and name.endswith(".JPEG"):
                    with zf.open(member) as f:
                        image = Image.open(f).convert("RGB")  # tfds encodes PIL images without TensorFlow
                    yield name, {"id": name, "image": image, "label": label_of(name)}
