"""The resume folder of an interrupted quantize run: after each finished block, the next block's inputs and
the block's quantized weights, committed by an atomic rename of state.json. A run resumes only from a folder
whose digest is its own (calib.pipeline.Recipe.digest: model fingerprint, calibration, method and options)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..io.checkpoint import PackedCodes, load_tensor_file, load_tensors_and_metadata, qweights_layout, qweights_to_tensors, save_tensor_file, save_tensors
from ..quant.qweight import QuantizedWeight


class ResumeState:
    """A folder holding the inputs of the next block and the finished blocks' quantized weights."""

    def __init__(self, folder: Path | None, run_digest: str):
        self.folder, self.run_digest = folder, run_digest

    def next_block(self) -> int:
        """Where to resume: 0 unless the folder is this run's and holds the next block's inputs (a folder
        from before they were stored as safetensors has hidden.pt, which is not read)."""
        if self.folder is None or not (self.folder / "state.json").exists():
            return 0
        try:  # a state that cannot be read (a damaged disk, an edit) starts the run over, never blocks it
            state = json.loads((self.folder / "state.json").read_text())
            next_block = int(state["next_block"]) if isinstance(state, dict) else -1
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        if state.get("run") != self.run_digest or next_block < 0 or not (self.folder / "hidden.safetensors").exists():
            return 0
        return next_block

    def save(self, next_block: int, hidden: torch.Tensor, qweights: dict[str, QuantizedWeight],
             fp_hidden: torch.Tensor | None = None, floats: dict[str, torch.Tensor] | None = None) -> None:
        """fp_hidden: the float model's states, which learned-rounding methods train towards; floats: the
        block's parameters that stay float (norms, biases), as the block leaves them."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        block = next_block - 1
        save_tensors(self.folder / f"block_{block:04d}.safetensors", qweights_to_tensors(qweights),
                     {"layout": json.dumps(qweights_layout(qweights))})
        if floats:
            save_tensors(self.folder / f"block_{block:04d}.float.safetensors",
                         {name: t.contiguous() for name, t in floats.items()})
        for name, states in (("hidden", hidden), ("fp_hidden", fp_hidden)):
            if states is not None:
                save_tensor_file(self.folder / f"{name}.safetensors", states)
        (self.folder / "state.tmp").write_text(json.dumps({"run": self.run_digest, "next_block": next_block}))
        os.replace(self.folder / "state.tmp", self.folder / "state.json")  # the commit point of the block

    def load_packed(self, blocks: int) -> PackedCodes:
        """The first `blocks` blocks' quantized weights as stored (packed)."""
        packed = PackedCodes({}, {})
        for b in range(blocks):
            tensors, metadata = load_tensors_and_metadata(self.folder / f"block_{b:04d}.safetensors")
            packed.update(PackedCodes(tensors, json.loads(metadata["layout"])))
        return packed

    def load_qweights(self, blocks: int) -> dict[str, QuantizedWeight]:
        return self.load_packed(blocks).unpacked()

    def load_floats(self, blocks: int) -> dict[str, torch.Tensor]:
        """The first `blocks` blocks' float parameters (a folder written before they were kept has none)."""
        floats = {}
        for b in range(blocks):
            path = self.folder / f"block_{b:04d}.float.safetensors"
            if path.exists():
                floats.update(load_tensors_and_metadata(path)[0])
        return floats

    def load_hidden(self, name: str = "hidden") -> torch.Tensor | None:
        path = self.folder / f"{name}.safetensors"
        return load_tensor_file(path) if path.exists() else None

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
