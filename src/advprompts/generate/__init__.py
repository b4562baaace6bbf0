"""Generate training sets: source-conditioned (learned or text prompts) and plain text-to-image.

Both write ``images/NNNNN.png``, ``metadata.csv`` (readable by ``datasets.load_dataset(
"imagefolder", data_dir=out)``, by torchvision and by :class:`~advprompts.data.folder.FolderDataset`)
and ``README.md``, a dataset card with which ``datasets.load_dataset(out)`` types the columns
(``label`` a ClassLabel with the class names; :mod:`advprompts.data.card`).
Image k is deterministic given the run seed and k, whatever the batch size, shard or process count.
With ``shard=(i, n)`` a process makes the images with ``k % n == i``; under a multi-process launcher
(``accelerate launch``, ``torchrun``) each process takes its share of that (:func:`resolve_shard`).
A restarted run skips finished images. PNGs are written atomically by a background thread; a
shard appends its rows to ``.parts/`` once their images exist; the rows are merged into
``metadata.csv`` when the shard (under a launcher: every process) finishes.

Modules: :mod:`~advprompts.generate.sources` (source-conditioned), :mod:`~advprompts.generate.text2img`
(plain text-to-image), :mod:`~advprompts.generate.output` (images, metadata rows, seeds).
"""

from advprompts.generate.output import COLUMNS, GenerateResult, Rows, image_seed, to_uint8
from advprompts.generate.sources import apply_fast_path, generate_dataset
from advprompts.generate.text2img import generate_text2img
from advprompts.shards import resolve_shard

__all__ = ["COLUMNS", "GenerateResult", "Rows", "apply_fast_path", "generate_dataset", "generate_text2img",
           "image_seed", "resolve_shard", "to_uint8"]
