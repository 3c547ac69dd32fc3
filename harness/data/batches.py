"""Streaming batches from a prepared split file (harness.data.splitfile) for Keras, on any backend.

``SplitBatches`` is a ``keras.utils.PyDataset``: it yields (images uint8 (B, S, S, 3), targets int32
(B, 6)) with targets[:, 0] the length class and targets[:, 1:] the digits. Only the labels (6 numbers
per example) live in memory; images are read from the file batch by batch, unless ``cache=True``.

- Order: a permutation drawn from (seed, epoch), so every run with the same seed sees the same
  batches, and the order changes every epoch (Keras calls on_epoch_end).
- Sharding: each epoch's order is cut into ``shard_count`` blocks of sizes differing by at most one;
  shard ``shard_index`` takes one. All shards of one seed are disjoint and together cover the split.
- Reads (``reader``): the prepared ``images`` dataset is contiguous and uncompressed, so its bytes are
  mapped with np.memmap at the dataset's file offset and a batch is one numpy gather ("memmap");
  measured ~40x faster than h5py's sorted fancy indexing (random batches of 128 from the page
  cache: ~310k against ~8k images/s, benchmarks/pipeline_throughput.py), which is the fallback
  for a file without a plain offset (chunked or compressed, "h5py"). ``cache=True`` reads the
  whole split into memory once, when the object is made ("memory"). Mapped pages belong to the
  OS page cache, not to the process: streaming never holds a split in process memory.
- Processes: an h5py handle must not cross a fork (the HDF5 library state is per process), so each
  process opens its own on first use; a mapping or a cached array is inherited by forked workers
  as it is. Pickling drops all three; the copy opens (or loads) its own on first use.
"""

from __future__ import annotations

import math
import os

import numpy as np

from harness.backend import load_keras
from harness.data.splitfile import PreparedSplit

keras = load_keras()


class SplitBatches(keras.utils.PyDataset):
    """Batches of one prepared split file; ``kwargs`` go to PyDataset (workers, use_multiprocessing,
    max_queue_size). The last batch may be partial. With ``shuffle=False`` the order is the file's.

    ``cache=True`` loads the split's images into memory now, once (``data.cache`` in a spec); else
    they are streamed. ``memmap=False`` reads through h5py even where the file could be mapped
    (for comparison). ``reader`` says which is used: "memory", "memmap" or "h5py".

    Keras' ``fit(shuffle=True)`` (its default) also permutes the batch order with Python's ``random``;
    that is harmless, and ``shuffle=False`` there leaves this class's order alone.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int, *, shuffle: bool, seed: int = 0,
                 shard_index: int = 0, shard_count: int = 1, cache: bool = False, memmap: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
        self.split = PreparedSplit(path)  # checks the file
        self.path = self.split.path
        self.batch_size = batch_size
        self.shuffle, self.seed = shuffle, seed
        self.shard_index, self.shard_count = shard_index, shard_count
        self._targets = self.split.targets()  # 24 bytes per example
        self.count = len(self._targets)
        self.epoch = 0  # sets the order
        self._images = self._pid = None
        self._mappable = memmap and self.split.image_offset is not None
        self.reader = "memory" if cache else "memmap" if self._mappable else "h5py"
        if cache:
            self._dataset()

    @property
    def epoch(self) -> int:
        """Epochs completed; setting it (e.g. to resume a run) selects that epoch's order."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = value
        self._order = self._epoch_order()

    @property
    def num_examples(self) -> int:
        """Examples in this shard, per epoch."""
        return len(self._order)

    def __len__(self) -> int:
        return math.ceil(len(self._order) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        return self._read(rows), self._targets[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _epoch_order(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self._epoch]).permutation(self.count)
        else:
            order = np.arange(self.count)
        return np.array_split(order, self.shard_count)[self.shard_index]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        images = self._dataset()
        if self.reader == "h5py":
            return images.read(rows)  # sorted reads, put back in this order
        return images[rows]  # numpy gathers in any order, into a new array

    def _dataset(self):
        # Opened on first use (an h5py handle: in each process); a racing second open in another
        # thread is harmless (h5py serialises calls, and each handle stays alive while referenced).
        if self._images is None or (self.reader == "h5py" and self._pid != os.getpid()):
            self._images, self._pid = self._open(), os.getpid()
        return self._images

    def _open(self):
        if self.reader == "h5py":
            return self.split.open()  # an open handle (a SplitReader)
        if not self._mappable:  # reader "memory", from a file that cannot be mapped
            return self.split.images()
        mapped = self.split.map_images()
        return np.array(mapped) if self.reader == "memory" else mapped

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = state["_pid"] = None
        return state

