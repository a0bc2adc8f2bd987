"""A build's work folder: one file pair per finished chunk, so a killed build resumes where it stopped.

``chunks/NNNNN.safetensors`` holds a chunk's per-answer means, ``NNNNN.json`` its answers and the tensor file's hash;
``work.json`` pins the generation settings and the model, so answers made otherwise are never mixed in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend.build.plan import Unit
from backend.build.settings import BUILD_VERSION
from backend.errors import PersonaSpaceError
from backend.store.space import sha256_file


@dataclass
class WorkFolder:
    """Per-chunk results on disk: ``chunks/NNNNN.safetensors`` (means) + ``NNNNN.json`` (answers)."""

    root: Path
    info: dict[str, Any] = field(default_factory=dict)

    def open(self, key: str, model_fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "chunks").mkdir(exist_ok=True)
        marker = self.root / "work.json"
        expected = {"generation_key": key, "model_fingerprint": model_fingerprint, "build_version": BUILD_VERSION}
        if marker.exists():
            try:
                found = json.loads(marker.read_text())
            except json.JSONDecodeError as exc:
                raise PersonaSpaceError(f"{marker} is corrupt; delete the work folder {self.root} to start over") from exc
            if found != expected:
                raise PersonaSpaceError(
                    f"work folder {self.root} holds answers made with other settings or another model ({found}); "
                    "use another --work folder or delete this one"
                )
        else:
            marker.write_text(json.dumps(expected))

    def paths(self, index: int) -> tuple[Path, Path]:
        return self.root / "chunks" / f"{index:05d}.safetensors", self.root / "chunks" / f"{index:05d}.json"

    def done(self, index: int) -> bool:
        return self.paths(index)[1].exists()

    def save(self, index: int, units: Sequence[Unit], means: torch.Tensor, records: list[dict[str, Any]]) -> None:
        from safetensors.torch import save_file

        tensor_path, json_path = self.paths(index)
        tmp = tensor_path.with_suffix(".tmp")
        save_file({"means": means.contiguous()}, str(tmp))
        os.replace(tmp, tensor_path)
        payload = {"units": [asdict(u) for u in units], "answers": records, "sha256": sha256_file(tensor_path)}
        tmp_json = json_path.with_suffix(".jtmp")
        tmp_json.write_text(json.dumps(payload, ensure_ascii=False))
        os.replace(tmp_json, json_path)  # the chunk counts as done only once this exists

    def load(self, index: int) -> tuple[list[Unit], torch.Tensor, list[dict[str, Any]]]:
        from safetensors.torch import load_file

        tensor_path, json_path = self.paths(index)
        payload = json.loads(json_path.read_text())
        if sha256_file(tensor_path) != payload["sha256"]:
            raise PersonaSpaceError(f"chunk file {tensor_path} is corrupt; delete {json_path} and rerun to regenerate it")
        return [Unit(**u) for u in payload["units"]], load_file(str(tensor_path))["means"], payload["answers"]


def progress(total: int, desc: str, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="chunk", dynamic_ncols=True, mininterval=2.0)
