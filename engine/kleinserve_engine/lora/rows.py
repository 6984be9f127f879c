"""Per-row LoRA deltas for one batch: rows may use different adapters, several at once, or none.

For each targeted Linear, a forward hook adds `up_row @ down_row @ x_row` to every row's output, with the row's
adapters concatenated along the rank (so a request with two adapters is one low-rank product of rank r1 + r2, its
scales folded into `up`). The per-row matrices are gathered once per batch from the distinct adapter combinations
by a row -> combination index, then used by two batched matmuls per layer and step, as multi-LoRA LLM servers do
(punica / S-LoRA). Rows without an adapter get zero matrices, so their output is the base output plus exact zeros.
When every row uses the same combination, the hook uses plain matmuls with the shared matrices instead.

No base weight is touched and nothing is rebuilt per adapter: switching adapters swaps the tensors the hooks read.
A batch in which no row has an adapter installs no hook at all: its computation is the engine's without LoRA.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..fused_qkv import fused_parts
from ..uploads import upload
from .adapter import Adapter
from .formats import Delta

RowLoras = list[tuple[Adapter, float]]  # one request's adapters and their scales


ATTR = "_kleinserve_lora"  # on each hooked Linear: its _Weights for the running batch, or None


@dataclass
class _Weights:
    down_t: torch.Tensor  # [in, R] shared, or [B, in, R] per batch row
    up_t: torch.Tensor  # [R, out] shared, or [B, R, out] per batch row
    per_row: bool
    # per-row matrices for the rows of the transformer call (the batch rows, or e.g. guidance's extra rows)
    down_call: torch.Tensor | None = None
    up_call: torch.Tensor | None = None

    def __post_init__(self):
        self.down_call, self.up_call = self.down_t, self.up_t


class _Plan:
    def __init__(self, weights: dict[str, _Weights], rows: int):
        self.weights = weights
        self.rows = rows
        self.call_rows: tuple[int, ...] = tuple(range(rows))

    def keep(self, idx: torch.Tensor) -> None:
        for w in self.weights.values():
            if w.per_row:
                w.down_t, w.up_t = w.down_t.index_select(0, idx), w.up_t.index_select(0, idx)
                w.down_call, w.up_call = w.down_t, w.up_t
        self.rows = int(idx.numel())
        self.call_rows = tuple(range(self.rows))

    def map_rows(self, call_rows: list[int]) -> None:
        rows = tuple(call_rows)
        if rows == self.call_rows:
            return
        self.call_rows = rows
        identity = rows == tuple(range(self.rows))
        idx = None
        for w in self.weights.values():
            if not w.per_row:
                continue
            if identity:
                w.down_call, w.up_call = w.down_t, w.up_t
                continue
            if idx is None:
                idx = upload(torch.tensor(rows, dtype=torch.long), w.down_t.device)
            # e.g. classifier-free guidance appends unconditional rows: each uses its request's adapters
            w.down_call, w.up_call = w.down_t.index_select(0, idx), w.up_t.index_select(0, idx)


def _apply(module, args, output):
    """The one forward hook of every LoRA-capable Linear. One function for all layers and no per-layer constant,
    so the compiled code of a repeated block stays shared between blocks (dynamo guards on what a hook reads)."""
    w = getattr(module, ATTR, None)
    if w is None:
        return None  # output unchanged
    x = args[0]
    if x.dtype != w.down_t.dtype:
        x = x.to(w.down_t.dtype)
    if w.per_row:
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(x3, w.down_call), w.up_call)
    else:
        delta = (x @ w.down_t) @ w.up_t
    return output + delta.reshape(output.shape).to(output.dtype)


def _hook(module):
    """Registers _apply once per module, whatever number of engines share the transformer; the handle, or None."""
    if any(fn is _apply for fn in module._forward_hooks.values()):
        return None
    return module.register_forward_hook(_apply)


def _combined(deltas: list[tuple[Delta, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several adapters on one layer as one low-rank product: down stacked on rank, up (scaled) side by side."""
    down = torch.cat([d.down for d, _ in deltas]) if len(deltas) > 1 else deltas[0][0].down
    up = torch.cat([d.up * (d.scale * s) for d, s in deltas], dim=1)
    return down, up


def _in_rows(pieces: list[tuple[int, torch.Tensor, torch.Tensor]], out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deltas of some projections of a fused Linear, (first output row, down, up) each, as one low-rank product on
    its whole output: the distinct downs stacked on the rank, each up in its own rows and its down's rank columns,
    zeros elsewhere. A down shared by the three projections (a fused-qkv adapter) is used once: that is the
    adapter's own fused product."""
    downs: dict[int, tuple[int, torch.Tensor]] = {}
    for _, down, _ in pieces:
        if id(down) not in downs:
            downs[id(down)] = (sum(d.shape[0] for _, d in downs.values()), down)
    rank = sum(d.shape[0] for _, d in downs.values())
    up_all = pieces[0][2].new_zeros(out_features, rank)
    for row, down, up in pieces:
        col = downs[id(down)][0]
        up_all[row : row + up.shape[0], col : col + up.shape[1]] = up
    down_all = torch.cat([d for _, d in downs.values()]) if len(downs) > 1 else pieces[0][1]
    return down_all, up_all


class RowLora:
    """Owned by the engine; `active(rows)` wraps a batch's denoise, `keep(idx)` follows rows dropped mid-batch."""

    def __init__(self, transformer, store, rank_multiple: int = 1, compiled: bool = False):
        self.transformer = transformer
        self.store = store
        self.rank_multiple = max(1, rank_multiple)  # pad ranks so compiled graphs see few distinct shapes
        self._plan: _Plan | None = None
        # projections the transformer runs inside a fused Linear (fused_qkv.py): their adapters act on its output rows
        self.fused = fused_parts(transformer)
        self.fused_out = {t: transformer.get_submodule(t).out_features for t, _ in self.fused.values()}
        # torch.compile does not guard on hooks added after a graph was compiled (skip_nnmodule_hook_guards): a hook
        # registered per batch would be silently left out of the compiled blocks. A compiled transformer therefore
        # gets its hooks once, before its first call, on every Linear; with no plan active they return at trace time,
        # so the no-LoRA graph holds no LoRA operation and a LoRA batch gets its own guarded graph.
        self.persistent = compiled
        if compiled:
            for name in dict.fromkeys(self._target(n) for n in store.shapes):
                module = transformer.get_submodule(name)
                setattr(module, ATTR, None)
                _hook(module)

    # -- planning ---------------------------------------------------------------------------------------------
    def plan(self, rows: list[RowLoras]) -> _Plan | None:
        combos: dict[tuple, RowLoras] = {}
        row_combo = []
        for loras in rows:
            key = tuple((a.sha256, s) for a, s in loras) if loras else None
            if key is not None:
                combos.setdefault(key, loras)
            row_combo.append(key)
        if not combos:
            return None
        on_device = {}
        for loras in combos.values():
            for a, _ in loras:
                if a.sha256 not in on_device:
                    on_device[a.sha256] = self.store.on_model_device(a)
        layers = sorted({name for mods in on_device.values() for name in mods})
        targets: dict[str, list[str]] = {}  # hooked Linear -> the adapter modules it carries
        for name in layers:
            targets.setdefault(self._target(name), []).append(name)
        uniform = len(combos) == 1 and None not in row_combo
        order = list(combos)
        slot = [order.index(k) if k is not None else len(order) for k in row_combo]  # len(order) = the zero slot
        slot_t = None
        weights = {}
        for name, members in targets.items():
            parts = {}
            for key, loras in combos.items():
                pieces = []
                for member in members:
                    deltas = [(on_device[a.sha256][member], s) for a, s in loras if member in on_device[a.sha256]]
                    if deltas:
                        pieces.append((self.fused.get(member, (name, 0))[1], *_combined(deltas)))
                if pieces and name in self.fused_out:
                    parts[key] = _in_rows(pieces, self.fused_out[name])
                elif pieces:
                    parts[key] = pieces[0][1:]
            if uniform:
                down, up = parts[order[0]]
                pad = -down.shape[0] % self.rank_multiple
                if pad:  # zero rank rows add exact zeros
                    down = torch.cat([down, down.new_zeros(pad, down.shape[1])])
                    up = torch.cat([up, up.new_zeros(up.shape[0], pad)], dim=1)
                weights[name] = _Weights(down.t().contiguous(), up.t().contiguous(), per_row=False)
                continue
            some = next(iter(parts.values()))
            in_f, out_f = some[0].shape[1], some[1].shape[0]
            rank = max(d.shape[0] for d, _ in parts.values())
            rank = -(-rank // self.rank_multiple) * self.rank_multiple
            like = some[0]
            down_s = torch.zeros(len(order) + 1, in_f, rank, dtype=like.dtype, device=like.device)
            up_s = torch.zeros(len(order) + 1, rank, out_f, dtype=like.dtype, device=like.device)
            for i, key in enumerate(order):
                if key in parts:
                    d, u = parts[key]
                    down_s[i, :, : d.shape[0]] = d.t()
                    up_s[i, : d.shape[0]] = u.t()
            if slot_t is None:
                slot_t = upload(torch.tensor(slot, dtype=torch.long), like.device)
            weights[name] = _Weights(down_s.index_select(0, slot_t), up_s.index_select(0, slot_t), per_row=True)
        return _Plan(weights, len(rows))

    def _target(self, name: str) -> str:
        """The Linear that computes a module's output: the module itself, or the fused Linear it is part of."""
        return self.fused[name][0] if name in self.fused else name

    # -- applying ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self, rows: list[RowLoras]):
        """Adds each row's adapters to the transformer for the duration of the block; nothing when no row has one."""
        plan = self.plan(rows) if any(rows) else None
        if plan is None:
            yield
            return
        modules = {name: self.transformer.get_submodule(name) for name in plan.weights}
        handles = [] if self.persistent else [h for h in map(_hook, modules.values()) if h is not None]
        for name, m in modules.items():
            setattr(m, ATTR, plan.weights[name])
        self._plan = plan
        try:
            yield
        finally:
            for m in modules.values():
                setattr(m, ATTR, None)
            for h in handles:
                h.remove()
            self._plan = None

    def keep(self, idx: torch.Tensor) -> None:
        """The batch dropped rows (canceled requests): keep the same rows of the per-row matrices."""
        if self._plan is not None:
            self._plan.keep(idx)

    def map_rows(self, call_rows: list[int]) -> None:
        """The next transformer calls carry these batch rows (a row may appear twice, e.g. for guidance)."""
        if self._plan is not None:
            self._plan.map_rows(call_rows)
