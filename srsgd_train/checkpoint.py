"""Atomic, verified checkpoints on any fsspec URL.

    <run>/checkpoints/step_00012000/
        <files...>          written first (model.pt, optim.pt, train_state.json, rng/rank_*.pt)
        MANIFEST.json       written last: every file's size and sha256, step, world size,
                            package versions, recipe hash
    <run>/checkpoints/latest   the newest folder's name, replaced only after its MANIFEST

A checkpoint folder without a valid MANIFEST does not exist. Loading verifies sizes and
checksums first and never unpickles code (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import posixpath
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec

from srsgd_train.errors import UserError

MANIFEST = "MANIFEST.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d{8,})$")
FORMAT_VERSION = 1


class CheckpointError(UserError):
    pass


def from_bytes(data: bytes, map_location: Any = "cpu") -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def file_entry(name: str, data: bytes) -> dict[str, Any]:
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class HashingWriter:
    """File wrapper that hashes what passes through it. A large chunk is hashed on a
    helper thread while the main thread writes it (both release the GIL), and ``write``
    returns only when both are done, so the caller's buffer is never read late."""

    BIG = 1 << 20

    def __init__(self, f: Any, pool: ThreadPoolExecutor) -> None:
        self.f, self.size, self.pool = f, 0, pool
        self._sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.size += len(data)
        if len(data) < self.BIG:
            self._sha.update(data)
            return self.f.write(data)
        pending = self.pool.submit(self._sha.update, data)
        n = self.f.write(data)
        pending.result()
        return n

    def flush(self) -> None:
        self.f.flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def versions() -> dict[str, str]:
    import torch

    from srsgd_train import __version__

    return {"srsgd_train": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


@dataclass
class Checkpoint:
    """A verified checkpoint folder."""

    fs: Any
    path: str
    manifest: dict[str, Any]
    verified: set[str] = field(default_factory=set)

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    def _entry(self, name: str) -> dict[str, Any]:
        entry = next((f for f in self.manifest["files"] if f["path"] == name), None)
        if entry is None:
            raise CheckpointError(f"Checkpoint {self.path} has no file {name!r} in its manifest.")
        return entry

    def _mismatch(self, name: str) -> CheckpointError:
        return CheckpointError(
            f"Checkpoint file {posixpath.join(self.path, name)} does not match its manifest "
            "(truncated, corrupted or modified)."
        )

    def _fetch(self, name: str) -> tuple[dict[str, Any], bytes]:
        """The file's manifest entry and its bytes, with the size already checked."""
        entry = self._entry(name)
        data = self.fs.cat_file(posixpath.join(self.path, name))
        if len(data) != entry["size"]:
            raise self._mismatch(name)
        return entry, data

    def read(self, name: str) -> bytes:
        entry, data = self._fetch(name)
        if name not in self.verified:  # each file is hashed once per open
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise self._mismatch(name)
            self.verified.add(name)
        return data

    def verify(self, name: str) -> None:
        self.read(name)

    def load(self, name: str, map_location: Any = "cpu") -> Any:
        """Read, verify and deserialize; hashing runs beside deserialization (on a thread)
        and the result is used only if the hash matches."""
        entry, data = self._fetch(name)
        if name in self.verified:
            return from_bytes(data, map_location)
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
            try:
                obj, error = from_bytes(data, map_location), None
            except Exception as e:  # judged after the hash: a corrupt file is a user error
                obj, error = None, e
            if digest.result() != entry["sha256"]:
                raise self._mismatch(name)
        if error is not None:
            raise CheckpointError(f"Checkpoint file {posixpath.join(self.path, name)} cannot be loaded: {error}")
        self.verified.add(name)
        return obj

    def load_json(self, name: str) -> Any:
        return json.loads(self.read(name))

    def has(self, name: str) -> bool:
        return any(f["path"] == name for f in self.manifest["files"])


def open_folder(fs: Any, path: str, verify: bool = True) -> Checkpoint:
    """Open a checkpoint folder, checking its manifest (and with ``verify`` every file)."""
    path = path.rstrip("/")
    mpath = posixpath.join(path, MANIFEST)
    if not fs.exists(mpath):
        raise CheckpointError(f"{path} is not a checkpoint: it has no {MANIFEST} (an unfinished save?).")
    try:
        manifest = json.loads(fs.cat_file(mpath))
        _ = int(manifest["step"]), list(manifest["files"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{mpath} is not a valid manifest.") from None
    ckpt = Checkpoint(fs, path, manifest)
    if verify:
        for entry in manifest["files"]:
            ckpt.verify(entry["path"])
    return ckpt


class CheckpointStore:
    """The checkpoints folder of one run directory (local path or any fsspec URL)."""

    def __init__(self, run_dir: str, keep: int = 3) -> None:
        self.fs, root = fsspec.core.url_to_fs(run_dir)
        self.root = root.rstrip("/") or "/"
        self.dir = posixpath.join(self.root, "checkpoints")
        self.keep = keep
        self.protected: set[str] = set()  # never deleted: the checkpoint we resumed from

    @property
    def is_local(self) -> bool:
        return _is_local(self.fs)

    # -- writing ------------------------------------------------------------------------
    def folder(self, step: int) -> str:
        return posixpath.join(self.dir, f"step_{step:08d}")

    def begin(self, step: int) -> str:
        """Prepare an empty folder for ``step`` (a folder left by a crashed save is removed)."""
        path = self.folder(step)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self.fs.makedirs(path, exist_ok=True)
        return path

    def write_file(self, folder: str, name: str, data: bytes) -> dict[str, Any]:
        target = posixpath.join(folder, name)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        with self.fs.open(target, "wb") as f:
            f.write(data)
        return file_entry(name, data)

    def write_object(self, folder: str, name: str, obj: Any) -> dict[str, Any]:
        """torch.save ``obj`` straight into the file, hashing on the way."""
        import torch

        target = posixpath.join(folder, name)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        opener = open if _is_local(self.fs) else self.fs.open  # fsspec's local writer copies twice
        with opener(target, "wb") as f, ThreadPoolExecutor(1) as pool:
            w = HashingWriter(f, pool)
            torch.save(obj, w)
        return {"path": name, "size": w.size, "sha256": w.hexdigest()}

    def files_under(self, folder: str) -> list[str]:
        """Relative paths of every file under ``folder`` (the manifest excluded)."""
        out = []
        for path in self.fs.find(folder):
            rel = posixpath.relpath(path, folder)
            if rel != MANIFEST and not rel.endswith(".tmp"):
                out.append(rel)
        return sorted(out)

    def entry_for(self, folder: str, name: str) -> dict[str, Any]:
        """Manifest entry of a file someone else (DeepSpeed) wrote."""
        sha = hashlib.sha256()
        size = 0
        with self.fs.open(posixpath.join(folder, name), "rb") as f:
            while chunk := f.read(1 << 24):
                sha.update(chunk)
                size += len(chunk)
        return {"path": name, "size": size, "sha256": sha.hexdigest()}

    def commit(self, folder: str, step: int, entries: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        """Write MANIFEST last, then move ``latest``, then apply retention."""
        manifest = {"format": FORMAT_VERSION, "step": step, "created": time.time(),
                    "files": sorted(entries, key=lambda e: e["path"]), "versions": versions(), **meta}
        self._atomic_write(posixpath.join(folder, MANIFEST), json.dumps(manifest, indent=1).encode())
        self._atomic_write(posixpath.join(self.dir, LATEST), posixpath.basename(folder).encode())
        self.prune()

    def _atomic_write(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        if self.fs.exists(path):
            self.fs.rm(path)
        self.fs.mv(tmp, path)

    def prune(self) -> None:
        steps = self.steps(valid_only=True)
        for folder in steps[:-self.keep]:
            if folder not in self.protected:
                self.fs.rm(folder, recursive=True)

    # -- reading ------------------------------------------------------------------------
    def steps(self, valid_only: bool = False) -> list[str]:
        if not self.fs.isdir(self.dir):
            return []
        out = []
        for p in self.fs.ls(self.dir, detail=False):
            name = posixpath.basename(p.rstrip("/"))
            if STEP_DIR.match(name) and (not valid_only or self.fs.exists(posixpath.join(p, MANIFEST))):
                out.append(posixpath.join(self.dir, name))
        return sorted(out)

    def open(self, path: str, verify: bool = True) -> Checkpoint:
        return open_folder(self.fs, path, verify)

    def candidates(self) -> list[str]:
        """Checkpoint folders, newest first (folders without a manifest are not listed)."""
        return list(reversed(self.steps(valid_only=True)))

    def latest_valid(self, log: Any = None) -> Checkpoint | None:
        """Newest checkpoint whose files all verify; older ones are tried when newer ones fail."""
        for path in self.candidates():
            try:
                return self.open(path)
            except CheckpointError as e:
                if log:
                    log(f"skipping checkpoint {path}: {e} Falling back to the previous one.")
        return None


def open_checkpoint(url: str, verify: bool = True) -> Checkpoint:
    """Open a checkpoint folder, or the latest valid checkpoint of a run dir (or of its
    ``checkpoints/`` folder)."""
    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    if fs.exists(posixpath.join(path, MANIFEST)):
        return open_folder(fs, path, verify)
    if not fs.exists(path):
        raise CheckpointError(f"{url} does not exist.")
    run_dir = posixpath.dirname(path) if posixpath.basename(path) == "checkpoints" else path
    store = CheckpointStore(fs.unstrip_protocol(run_dir))
    ckpt = store.latest_valid()
    if ckpt is None:
        raise CheckpointError(f"{url} holds no valid checkpoint (no folder with a verified {MANIFEST}).")
    return ckpt
