"""`srsgd-train inspect`: what a checkpoint holds, every file verified against its manifest."""

from __future__ import annotations

from typing import Any

from srsgd_train.checkpoint import open_checkpoint


def describe(path: str) -> dict[str, Any]:
    ckpt = open_checkpoint(path, verify=True)  # raises CheckpointError naming a bad file
    m = ckpt.manifest
    return {
        "path": ckpt.path,
        "step": ckpt.step,
        "verified_files": len(m["files"]),
        "bytes": sum(f["size"] for f in m["files"]),
        "world_size": m.get("world_size"),
        "recipe_hash": m.get("recipe_hash"),
        "reason": m.get("reason"),
        "versions": m.get("versions"),
        "train_state": ckpt.load_json("train_state.json"),
        "files": m["files"],
    }
