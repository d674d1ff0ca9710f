"""Datasets, augmentations and a resumable, world-size-independent batch sampler.

Data order is a function of (seed, epoch) only: the global batch k of an epoch is
``perm[k*B:(k+1)*B]`` and rank r takes its r-th slice. Random augmentation is seeded per
sample from (seed, epoch, index), so neither the number of DataLoader workers, nor a
resume in the middle of an epoch, nor a different world size changes what a sample looks
like. That is what makes a resumed run bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from srsgd_train.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


# --- in-memory image tensors (digits, CIFAR, synthetic) ------------------------------

class TensorImages(Dataset):
    """uint8 or float images (N, C, H, W) with labels; optional pad-and-crop + flip."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], scale: float = 255.0, crop_pad: int = 0, flip: bool = False) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.scale, self.crop_pad, self.flip = scale, crop_pad, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        x = self.images[index].float() / self.scale  # never in place: float() may not copy
        if seed is not None and (self.crop_pad or self.flip):
            g = torch.Generator().manual_seed(seed)
            if self.crop_pad:
                p = self.crop_pad
                h, w = x.shape[-2:]
                x = torch.nn.functional.pad(x, (p, p, p, p))
                i, j = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()
                x = x[:, i:i + h, j:j + w]
            if self.flip and torch.rand((), generator=g).item() < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, int(self.labels[index])


def digits_datasets(augment: bool) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """The 1,797 8x8 handwritten digits that ship inside scikit-learn (UCI, real scans).
    A fixed split: 1,437 train / 360 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # values 0..16
    labels = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1437], perm[1437:]
    stats = dict(mean=(0.30,), std=(0.38,), scale=16.0)
    train = TensorImages(images[tr], labels[tr], crop_pad=1 if augment else 0, **stats)
    test = TensorImages(images[te], labels[te], **stats)
    return train, test, {"channels": 1, "image_size": 8, "num_classes": 10}


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batch files are pickles of dicts of numpy arrays: allow exactly those types."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")


def _read_cifar_file(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"{path} is not a CIFAR python batch file ({e}).") from None


def cifar_datasets(name: str, root: str | None, augment: bool) -> tuple[Dataset, Dataset, dict[str, Any]]:
    sub, train_files, test_files, key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    }[name]
    base = Path(root or "data") / sub
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise UserError(
            f"{name.upper()} files not found: expected {', '.join(missing)} in {base}. "
            f"srsgd-train never downloads data: fetch the 'python version' archive from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it so that {base} exists, "
            f"and set data.root (now {root!r}) to the folder that contains {sub}/."
        )

    def load(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            d = _read_cifar_file(base / f)
            xs.append(torch.as_tensor(d["data"]).view(-1, 3, 32, 32))
            ys.append(torch.as_tensor(d[key], dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    (xtr, ytr), (xte, yte) = load(train_files), load(test_files)
    stats = dict(mean=CIFAR_MEAN, std=CIFAR_STD)
    train = TensorImages(xtr, ytr, crop_pad=4 if augment else 0, flip=augment, **stats)
    test = TensorImages(xte, yte, **stats)
    return train, test, {"channels": 3, "image_size": 32, "num_classes": 10 if name == "cifar10" else 100}


def synthetic_datasets(cfg: Any) -> tuple[Dataset, Dataset, dict[str, Any]]:
    g = torch.Generator().manual_seed(1234)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)

    def make(n: int) -> TensorImages:
        x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        y = torch.randint(0, cfg.num_classes, (n,), generator=g)
        return TensorImages(x, y, mean=(0.5,) * cfg.channels, std=(0.29,) * cfg.channels)

    info = {"channels": cfg.channels, "image_size": cfg.image_size, "num_classes": cfg.num_classes}
    return make(cfg.train_samples), make(cfg.val_samples), info


# --- ImageNet folders -----------------------------------------------------------------

class SeededTransform(Dataset):
    """Wrap a dataset whose transform uses torch's global RNG; seed it per sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def imagenet_datasets(root: str | None, augment: bool) -> tuple[Dataset, Dataset, dict[str, Any]]:
    from torchvision import datasets, transforms as T

    base = Path(root or "data/imagenet")
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise UserError(
                f"ImageNet folder {base / split} not found. Expected the image-folder layout "
                f"{base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG; set data.root."
            )
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment \
        else T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    train = datasets.ImageFolder(str(base / "train"), transform=train_tf)
    val = datasets.ImageFolder(str(base / "val"), transform=val_tf)
    return SeededTransform(train), val, {"channels": 3, "image_size": 224, "num_classes": len(train.classes)}


def build_datasets(cfg: Any) -> tuple[Dataset, Dataset, dict[str, Any]]:
    if cfg.name == "digits":
        return digits_datasets(cfg.augment)
    if cfg.name in ("cifar10", "cifar100"):
        return cifar_datasets(cfg.name, cfg.root, cfg.augment)
    if cfg.name == "imagenet":
        return imagenet_datasets(cfg.root, cfg.augment)
    return synthetic_datasets(cfg)


# --- the sampler ----------------------------------------------------------------------

@dataclass
class GlobalBatchSampler(Sampler):
    """Yields this rank's share of each global batch, as (index, sample_seed) keys.

    ``set_epoch(epoch, start_step)`` positions it; the position needs no state of its own
    beyond (epoch, step-in-epoch), which the trainer checkpoints."""

    num_samples: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    epoch: int = 0
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise UserError(
                f"data.batch_size={self.global_batch} must be divisible by the world size {self.world_size}."
            )
        if self.num_samples < self.global_batch:
            raise UserError(f"data.batch_size={self.global_batch} is larger than the dataset ({self.num_samples}).")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch  # drop the last partial batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            perm = list(range(self.num_samples))
        local = self.global_batch // self.world_size
        for k in range(self.start_step, self.steps_per_epoch):
            start = k * self.global_batch + self.rank * local
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in perm[start:start + local]]


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Contiguous evaluation shard of rank ``rank``."""
    per = -(-n // world_size)
    return range(rank * per, min(n, (rank + 1) * per))


def build_loader(dataset: Dataset, batch_sampler: Any = None, batch_size: int | None = None,
                 indices: Sequence[int] | None = None, workers: int = 0, pin_memory: bool = False,
                 collate_fn: Callable | None = None) -> torch.utils.data.DataLoader:
    if batch_sampler is None:
        sub = torch.utils.data.Subset(dataset, list(indices)) if indices is not None else dataset
        return torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers,
                                           pin_memory=pin_memory, persistent_workers=False)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                       pin_memory=pin_memory, collate_fn=collate_fn)
