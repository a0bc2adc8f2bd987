"""The cap evaluation's model work, batched: greedy replies of (setting, item) rows through the decode engine
(:mod:`backend.decode.engine`), each row with its own floors (:class:`backend.hooks.rows.RowControls`) and its mean
projection at the space's target layer read as it is generated; and a benign reply's cost, teacher-forced (the share
of positions the cap moves at each layer, and the KL of the next-token distribution against the uncapped model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from backend.decode.engine import Decoder, generate_rows
from backend.decode.generate import eos_ids
from backend.errors import PersonaSpaceError
from backend.evaluation.cap_items import Item, Setting, row_seed
from backend.hooks.rows import RowControls
from backend.maths.divergence import kl_per_position
from backend.maths.sampling import choose_token
from backend.models.chat import encode_prompt
from backend.models.layers import block_output, find_decoder_layers
from backend.models.loading import LoadedModel
from backend.store.space import Space


@dataclass(frozen=True)
class Decoding:
    """How replies are chosen: greedy, or sampled (temperature + top-p, the live chat's defaults) from a generator
    seeded per item and run seed (:func:`backend.evaluation.cap_items.row_seed`); ``penalty`` is the repetition
    penalty (1 = off: the evaluation measures repetition, so it does not suppress it by default)."""

    greedy: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    penalty: float = 1.0

    @property
    def name(self) -> str:
        if self.greedy:
            return "greedy"
        extra = f", repetition penalty {self.penalty:g}" if self.penalty != 1.0 else ""
        return f"sampled (temperature {self.temperature:g}, top-p {self.top_p:g}{extra})"


Task = tuple[Setting, Item, int]  # (setting, item, run seed)


class Runner:
    """What every batch needs: the model, the space's axis (and the placebo directions), the hooked layers, pad and
    stop ids."""

    def __init__(
        self,
        loaded: LoadedModel,
        space: Space,
        settings: Sequence[Setting],
        max_new_tokens: int,
        *,
        decoding: Decoding | None = None,
        placebo_directions: torch.Tensor | None = None,
    ) -> None:
        self.loaded, self.space, self.settings = loaded, space, list(settings)
        self.decoding = decoding or Decoding(greedy=True)
        self.placebo_directions = placebo_directions
        self.model: nn.Module = loaded.model
        self.tokenizer = loaded.tokenizer
        self.axis = space.tensors["axis"].float()
        self.n_layers, self.hidden = int(self.axis.shape[0]), int(self.axis.shape[1])
        self.target = space.target_layer
        layers = sorted({layer for s in settings if s.window for layer in range(*s.window)})
        if layers and layers[-1] >= self.n_layers:
            raise PersonaSpaceError(f"a cap window reaches past the model's {self.n_layers} layers")
        self.layers = layers or [self.target]
        self.max_new_tokens = max_new_tokens
        self.stop_ids = eos_ids(loaded)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids or {0}))
        self.device = next(self.model.parameters()).device
        self.cache_pool: dict[tuple[int, int], Any] = {}
        self.prompts: dict[str, list[int]] = {}

    def prompt(self, item: Item) -> list[int]:
        if item.id not in self.prompts:
            self.prompts[item.id] = encode_prompt(self.tokenizer, item.system, list(item.messages))
        return self.prompts[item.id]

    def controls(self, rows: int) -> RowControls:
        directions = self.axis
        if self.placebo_directions is not None:  # set 0: the axis; set k: the k-th placebo direction
            directions = torch.cat([self.axis[None], self.placebo_directions.to(self.axis.dtype)])
        return RowControls(
            rows, self.n_layers, self.hidden, cap_directions=directions, monitor=(self.target, self.axis[self.target]),
            layers=self.layers, device=self.device,
        )  # fmt: skip

    def set_row(self, controls: RowControls, row: int, setting: Setting) -> None:
        if setting.placebo and self.placebo_directions is None:
            raise PersonaSpaceError(f"{setting.id} needs placebo directions")
        controls.set_cap(row, setting.taus(self.space), direction_set=setting.placebo)

    def generate(self, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """Replies of ``(setting, item, seed)`` rows in one batch; each with its mean projection at the target layer
        as generated (under the row's own cap)."""
        controls = self.controls(len(tasks))
        for row, (setting, _, _) in enumerate(tasks):
            self.set_row(controls, row, setting)
        decoder = Decoder(
            self.model,
            controls,
            layers_path=self.loaded.info.layers_path,
            pad_id=self.pad_id,
            cache_pool=self.cache_pool,
            bucket=16,
        )
        sums = [0.0] * len(tasks)
        counts = [0] * len(tasks)

        def on_step(index: int, fed: list[int | None], readouts: Any) -> None:
            for i, token in enumerate(fed):
                if token is not None and readouts is not None and readouts.monitor is not None:
                    sums[i] += float(readouts.monitor[i])
                    counts[i] += 1

        prompts = [self.prompt(item) for _, item, _ in tasks]
        d = self.decoding
        generators = [torch.Generator().manual_seed(row_seed(seed, item.id)) for _, item, seed in tasks]
        chosen: list[list[int]] = [[] for _ in tasks]

        def choose(index: int, logits: torch.Tensor) -> list[int | None]:
            picked: list[int | None] = []
            for i in range(len(tasks)):
                token = choose_token(
                    logits[i], greedy=d.greedy, temperature=d.temperature, top_p=d.top_p, penalty=d.penalty,
                    previous=chosen[i], generator=generators[i],
                )  # fmt: skip
                chosen[i].append(token)
                picked.append(token)
            return picked

        replies = generate_rows(
            decoder,
            prompts,
            self.max_new_tokens,
            stop_ids=self.stop_ids,
            choose=choose,
            on_step=on_step,
            layers_path=self.loaded.info.layers_path,
        )
        out = []
        for (setting, item, seed), tokens, s, n in zip(tasks, replies, sums, counts, strict=True):
            out.append(
                {
                    "part": "reply", "setting": setting.id, "item": item.id, "seed": seed, "group": item.group,
                    "kind": item.kind, "tokens": tokens, "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                    "projection": s / n if n else None,
                }
            )  # fmt: skip
        return out

    def read(self, item: Item, replies: Sequence[Sequence[int]]) -> list[float | None]:
        """Each reply's mean projection at the target layer over its own tokens, read by one **uncapped**
        teacher-forced pass over ``prompt + reply`` (all replies to ``item`` in one batch, right-padded: the model
        is causal, so padding after a reply never reaches it). Capped and uncapped replies are scored alike."""
        prompt = self.prompt(item)
        if not replies:
            return []
        width = len(prompt) + max(len(r) for r in replies)
        batch = torch.tensor([prompt + list(r) + [self.pad_id] * (width - len(prompt) - len(r)) for r in replies])
        acts = self._activations(batch.to(self.device), [self.target])[self.target]  # (rows, positions, hidden)
        u = self.axis[self.target] / self.axis[self.target].norm()
        proj = acts.float() @ u.to(acts.device)
        start = len(prompt)
        return [float(proj[i, start : start + len(r)].mean()) if r else None for i, r in enumerate(replies)]

    def activations(self, item: Item, reply: Sequence[int], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Uncapped activations ``{layer: (positions, hidden)}`` over ``prompt + reply`` (every position)."""
        ids = torch.tensor([self.prompt(item) + list(reply)], device=self.device)
        return {layer: a[0] for layer, a in self._activations(ids, layers).items()}

    def _activations(self, ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        blocks = find_decoder_layers(self.model, self.loaded.info.layers_path)
        seen: dict[int, torch.Tensor] = {}
        handles = []

        def keep(layer: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: object, output: object) -> None:
                seen[layer] = block_output(output).detach().float().cpu()

            return hook

        try:
            for layer in layers:
                handles.append(blocks[layer].register_forward_hook(keep(layer)))
            with torch.inference_mode():
                self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        return seen

    def cost(self, item: Item, reply: Sequence[int], settings: Sequence[Setting]) -> list[dict[str, Any]]:
        """Teacher-forced on ``prompt + reply``: one row uncapped plus one per setting, in one forward pass.

        Per setting: the share of positions the cap moved at each window layer, and the mean over the reply's
        next-token distributions (the last ``len(reply) + 1`` positions) of KL(uncapped || capped).
        """
        ids = self.prompt(item) + list(reply)
        rows = 1 + len(settings)
        controls = self.controls(rows)
        for row, setting in enumerate(settings, start=1):
            self.set_row(controls, row, setting)
        moved: dict[int, torch.Tensor] = {}
        blocks = find_decoder_layers(self.model, self.loaded.info.layers_path)
        handles: list[Any] = []
        try:
            for layer in self.layers:  # registered before the cap's hooks: they see the projection the cap reads
                handles.append(blocks[layer].register_forward_hook(self._moved_hook(layer, controls, moved)))
            handles.append(controls.attach(self.model, self.loaded.info.layers_path))
            keep = len(reply) + 1
            batch = torch.tensor([ids] * rows, device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=batch, use_cache=False, logits_to_keep=keep).logits[:, -keep:]
        finally:
            for h in handles:
                h.remove()
        kl = kl_per_position(logits[:1].expand_as(logits), logits).mean(dim=-1)  # (rows,)
        out = []
        for row, setting in enumerate(settings, start=1):
            window = range(*setting.window) if setting.window else range(0)
            out.append(
                {
                    "part": "cost", "setting": setting.id, "item": item.id, "group": item.group, "kind": item.kind,
                    "kl": float(kl[row]), "positions": len(ids),
                    "moved": {str(layer): float(moved[layer][row].float().mean()) for layer in window},
                }
            )  # fmt: skip
        return out

    def _moved_hook(self, layer: int, controls: RowControls, moved: dict[int, torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            hidden = block_output(output)
            u = controls.cap_units(layer, per_row=True).to(hidden.dtype)  # what the cap compares with the floor
            proj = torch.matmul(hidden, u.unsqueeze(-1)).squeeze(-1)
            moved[layer] = (controls.tau[:, layer].to(hidden.dtype).unsqueeze(-1) - proj) > 0  # (rows, positions)

        return hook
