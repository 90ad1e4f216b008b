"""Training/validation dataset over YOLO-labelled images, its collate function and loader factory.

Reproducibility: every sample draws its augmentation randomness from its own generators, seeded
from ``(seed, epoch, index)`` (:func:`sample_rng`), never from global or per-worker state. The
loader's sampler yields ``(epoch, index)`` pairs (:class:`EpochSampler`) and shuffles with a
generator seeded from ``(seed, epoch)``, so the number of workers, persistent workers and a
resumed run (``set_loader_epoch(loader, epoch)``) all see exactly the same images, order and
augmentations as an uninterrupted run.

Mosaic (opt-in, ``mosaic=True``): the sample and three other images drawn by the sample's own
generator are each resized to fit ``img_size`` and placed around a random centre on a
``2W x 2H`` grey canvas (top-left, top-right, bottom-left, bottom-right); boxes follow the
placement and are clipped to the canvas (boxes keeping under 20% of their area are dropped);
the canvas then goes through the normal training transforms (colour, flip, jitter,
letterbox to ``img_size``, which halves it).
"""
from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from detkit.boxes import clip_xyxy, cxcywh_to_xyxy, denormalize_cxcywh, normalize_cxcywh, xyxy_to_cxcywh
from detkit.data.datafiles import label_path_for, read_yolo_labels
from detkit.data.images import read_image
from detkit.data.transforms import LABEL_FIELD, PAD_FILL, find_letterbox

if TYPE_CHECKING:
    import albumentations as A

log = logging.getLogger(__name__)

#: mosaic keeps a clipped box only if it retains this fraction of its area
MOSAIC_MIN_VISIBILITY = 0.2


def sample_rng(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """Independent generators for one sample: numpy ``Generator`` and ``random.Random``.

    Depends only on ``(seed, epoch, index)`` (all non-negative ints), not on process or worker.
    """
    ss = np.random.SeedSequence([int(seed), int(epoch), int(index)])
    words = ss.generate_state(2, dtype=np.uint32)
    return np.random.default_rng(ss), random.Random(int(words[0]) << 32 | int(words[1]))


class YoloDataset(Dataset):
    """Images + YOLO label files -> letterboxed tensors and normalised targets.

    Labels are found with :func:`detkit.data.datafiles.label_path_for` and read (and validated,
    class ids against ``num_classes``) once, at construction: a missing label file means no
    objects; a bad line raises :class:`detkit.errors.AnnotationError` naming file:line.

    Args:
        image_paths: image files.
        num_classes: number of classes of the dataset.
        img_size: network input ``(W, H)`` in pixels.
        transforms: a pipeline from :mod:`detkit.data.transforms` (ends with ``Letterbox``).
        mosaic: opt-in 4-image mosaic (see module docstring).
        seed: base seed of the per-sample generators.

    Items (``dataset[index]`` or ``dataset[(epoch, index)]``; a plain index uses ``self.epoch``):
        ``image`` float32 tensor ``(3, H, W)`` in [0, 1], RGB;
        ``targets`` float32 tensor ``(K, 6)``: ``[0 (batch index, filled by collate_fn), class,
        cx, cy, w, h]`` normalised to the network input;
        ``info`` dict: ``path`` (str), ``orig_size`` ``(w, h)`` of the image file (of the
        ``2W x 2H`` canvas for a mosaic), ``scale`` and ``pad`` ``(pad_x, pad_y)`` of the final
        letterbox step (for the eval pipeline this maps original pixels to network pixels:
        ``x * scale + pad_x``), ``index``, ``epoch``, ``mosaic``.
    """

    def __init__(self, image_paths: Sequence[str | os.PathLike], num_classes: int,
                 img_size: tuple[int, int], transforms: A.Compose, mosaic: bool = False, seed: int = 0):
        self.image_paths = [Path(p) for p in image_paths]
        self.num_classes = int(num_classes)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.transforms = transforms
        self.mosaic = bool(mosaic)
        self.seed = int(seed)
        self.epoch = 0
        self.label_paths = [label_path_for(p) for p in self.image_paths]
        #: per image, float64 (K, 5): class, cx, cy, w, h normalised to the image
        self.labels: list[np.ndarray] = [read_yolo_labels(lp, num_classes=self.num_classes, missing_ok=True)
                                         for lp in self.label_paths]
        self._letterbox = find_letterbox(transforms)
        if self._letterbox is None:
            raise ValueError("transforms must end with detkit.data.transforms.Letterbox")

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the loader passes ``(epoch, index)`` instead)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` without augmentation.

        Returns:
            ``(image RGB uint8 (h, w, 3), boxes float32 (K, 4) xyxy image pixels, classes int64 (K,))``.
        """
        img = read_image(self.image_paths[index])
        h, w = img.shape[:2]
        lab = self.labels[index]
        boxes = cxcywh_to_xyxy(denormalize_cxcywh(lab[:, 1:5], w, h)).astype(np.float32)
        return img, boxes.reshape(-1, 4), lab[:, 0].astype(np.int64)

    def _mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        W, H = self.img_size
        canvas = np.full((2 * H, 2 * W, 3), PAD_FILL, dtype=np.uint8)
        xc, yc = int(rng.integers(W // 2, W + W // 2 + 1)), int(rng.integers(H // 2, H + H // 2 + 1))
        picks = [index, *(int(i) for i in rng.integers(0, len(self), size=3))]
        all_boxes, all_cls = [], []
        for k, i in enumerate(picks):
            img, boxes, cls = self.load(i)
            h, w = img.shape[:2]
            s = min(W / w, H / h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            x0 = xc - nw if k in (0, 2) else xc  # top-left corner of the placed image on the canvas
            y0 = yc - nh if k in (0, 1) else yc
            cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + nw, 2 * W), min(y0 + nh, 2 * H)
            canvas[cy1:cy2, cx1:cx2] = img[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0]
            b = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32) + np.array([x0, y0, x0, y0], np.float32)
            all_boxes.append(b)
            all_cls.append(cls)
        boxes = np.concatenate(all_boxes).reshape(-1, 4)
        cls = np.concatenate(all_cls)
        clipped = clip_xyxy(boxes, 2 * W, 2 * H)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        carea = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = (area > 0) & (carea >= MOSAIC_MIN_VISIBILITY * area)
        return canvas, clipped[keep].astype(np.float32), cls[keep]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        np_rng, py_rng = sample_rng(self.seed, epoch, index)
        if self.mosaic:
            img, boxes, cls = self._mosaic(index, np_rng)
        else:
            img, boxes, cls = self.load(index)
        orig_size = (img.shape[1], img.shape[0])  # the mosaic canvas for a mosaic
        # the pipeline shares the sample's generators (one stream, no correlated per-transform seeds)
        self.transforms.set_random_state(np_rng, py_rng)
        out = self.transforms(image=img, bboxes=boxes, **{LABEL_FIELD: cls})
        W, H = self.img_size
        res = out["image"]
        if res.shape[:2] != (H, W):
            raise RuntimeError(f"transforms produced {res.shape[1]}x{res.shape[0]}, expected {W}x{H}")
        xyxy = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(out[LABEL_FIELD], dtype=np.float32).reshape(-1)
        targets = np.zeros((len(xyxy), 6), dtype=np.float32)
        targets[:, 1] = labels
        targets[:, 2:] = normalize_cxcywh(xyxy_to_cxcywh(xyxy), W, H)
        image = torch.from_numpy(np.ascontiguousarray(res.transpose(2, 0, 1))).float().div_(255.0)
        lb = self._letterbox.params
        info = {"path": str(self.image_paths[index]), "orig_size": orig_size,
                "scale": float(lb.get("scale", 1.0)), "pad": (float(lb.get("pad_x", 0.0)), float(lb.get("pad_y", 0.0))),
                "index": index, "epoch": epoch, "mosaic": self.mosaic}
        return image, torch.from_numpy(targets), info


def collate_fn(batch: Sequence[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]
               ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Stack images ``(N, 3, H, W)``, concatenate targets ``(M, 6)`` with column 0 = batch index.

    Images without objects contribute no target rows; a batch without any object gives ``(0, 6)``.
    """
    images = torch.stack([b[0] for b in batch])
    parts = []
    for i, (_, t, _) in enumerate(batch):
        t = t.clone()
        t[:, 0] = i
        parts.append(t)
    targets = torch.cat(parts) if parts else torch.zeros((0, 6), dtype=torch.float32)
    return images, targets, [b[2] for b in batch]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(epoch), 0x5A3D]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class EpochSampler(Sampler):
    """Sampler yielding ``(epoch, index)`` pairs so the epoch travels with every index.

    Order: ``base`` (a sampler of ints, e.g. ``DistributedSampler`` or the class-weighted sampler;
    its ``set_epoch`` is called) or, without one, a permutation seeded from ``(seed, epoch)``
    (``shuffle``) or ``0..n-1``. With ``num_replicas > 1`` and a base without its own sharding,
    indices are padded by wrap-around to a multiple of ``num_replicas`` and sharded
    ``rank::num_replicas`` (as ``DistributedSampler`` does).
    """

    def __init__(self, num_items: int, shuffle: bool, seed: int, epoch: int = 0, base: Sampler | None = None,
                 rank: int = 0, num_replicas: int = 1):
        self.num_items = int(num_items)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.base = base
        self.rank = int(rank)
        self.num_replicas = int(num_replicas)
        self.skip = 0
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch (and skip its first ``skip`` samples of this rank, for a mid-epoch resume)."""
        self.epoch = int(epoch)
        self.skip = int(skip)
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(self.epoch)

    def _order(self) -> list[int]:
        if self.base is not None:
            order = [int(i) for i in self.base]
        elif self.shuffle:
            order = torch.randperm(self.num_items, generator=_epoch_generator(self.seed, self.epoch)).tolist()
        else:
            order = list(range(self.num_items))
        if self.num_replicas > 1 and not isinstance(self.base, DistributedSampler):
            total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
            order = order[self.rank::self.num_replicas]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self._order()[self.skip:]:
            yield (epoch, i)

    def __len__(self) -> int:
        n = len(self.base) if self.base is not None else self.num_items  # type: ignore[arg-type]
        if self.num_replicas > 1 and not isinstance(self.base, DistributedSampler):
            n = math.ceil(n / self.num_replicas)
        return max(n - self.skip, 0)


def _worker_init(worker_id: int) -> None:
    # augmentation randomness is per sample (sample_rng); this only keeps workers from
    # oversubscribing the CPU with their own thread pools.
    torch.set_num_threads(1)
    cv2.setNumThreads(0)


def make_loader(dataset: YoloDataset, batch_size: int, shuffle: bool, workers: int, seed: int, epoch: int = 0,
                sampler: Sampler | None = None, distributed: bool = False, *, drop_last: bool = False,
                pin_memory: bool | None = None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that is reproducible from ``(seed, epoch)``.

    Args:
        dataset: the dataset (its ``seed`` drives augmentations; ``seed`` here drives order).
        batch_size: images per batch (per process when distributed).
        shuffle: shuffle each epoch (ignored when ``sampler`` is given).
        workers: worker processes (0 = load in the main process); persistent when > 0.
        seed: order seed.
        epoch: first epoch; move on with :func:`set_loader_epoch` before each epoch.
        sampler: optional sampler of indices (e.g. :func:`detkit.data.sampling.class_weighted_sampler`).
        distributed: shard with ``DistributedSampler`` (or shard ``sampler``'s output) over the
            ``torch.distributed`` process group, which must be initialised.
        drop_last: drop the last incomplete batch.
        pin_memory: default: only when CUDA is available.
    Returns:
        DataLoader yielding ``collate_fn`` batches ``(images (N,3,H,W), targets (M,6), infos)``;
        ``loader.sampler`` is an :class:`EpochSampler`.
    """
    rank, world = 0, 1
    base = sampler
    if distributed:
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            raise RuntimeError("distributed=True needs an initialised torch.distributed process group")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if base is None:
            base = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                      drop_last=False)
    epoch_sampler = EpochSampler(len(dataset), shuffle, seed, epoch, base=base, rank=rank, num_replicas=world)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, sampler=epoch_sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None,
                      generator=torch.Generator().manual_seed(int(seed)))


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Call before iterating ``loader`` for ``epoch``; ``skip_batches`` resumes mid-epoch."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise TypeError("loader was not made by make_loader")
    sampler.set_epoch(epoch, skip=skip_batches * int(loader.batch_size or 1))
