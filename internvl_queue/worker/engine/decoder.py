"""Batched greedy decoding for InternVL on transformers' own modules, with a static KV cache.

transformers' ``generate`` spends most of a decode step in Python and kernel launches (about
30 ms for a 0.5 B model, whatever the batch size). Here the vision tower, the embedding merge and
the prefill run once per batch, and each decode step is a fixed-shape function of preallocated
tensors (static KV cache, state on the GPU), so on CUDA it is captured once as a CUDA graph and
replayed. The decoder layers, norms, rotary embedding and LM head are the model's own modules;
only the KV cache (``_StaticKV``, which the attention layers call through ``update``) and the
loop are ours.

Batches are left-padded: every row's prompt ends at the same cache slot, so all rows write their
next key/value at the same slot and one mask per row (``slot >= pad``) hides the padding.

Decode shapes (rows x KV slots) are planned once (``buckets.plan_decode``): each planned shape's
workspace is a view of one shared KV buffer, and on CUDA ``prepare`` captures all their graphs
before the engine serves, so that no batch ever waits for a capture.

A model that spans GPUs (``model.load_model(gpus=N)``, ``device_map.py``) has its inputs, vision
tower, embeddings and LM head on the first GPU and its decoder layers split between the GPUs. Each
layer's KV cache is then kept on that layer's GPU, the hidden state (with the mask and positions)
crosses at each boundary between GPUs and comes back for the LM head, and the step-by-step state
stays on the first GPU. Its decode steps run without CUDA graphs: a graph is captured on one
device's stream, and a step that crosses GPUs launches work on others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .attention import GROUPED_DECODE
from .buckets import SLOT_BUCKETS, DecodePlan, bucket, default_kv_budget, plan_decode
from .request import EngineRequest, StopReason
from .stats import EngineStats

__all__ = ["BatchDecoder", "DecodeOutput"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeOutput:
    tokens: list[int]
    stop: StopReason


class _StaticKV:
    """Per-layer K/V buffers of shape [rows, kv_heads, slots, head_dim].

    The model's attention layers call ``update`` with the new keys/values; they are written at
    ``write_index`` (a tensor, so that a captured graph can replay it) and the whole buffer is
    returned for attention, the mask hiding unwritten slots. The buffers are views of the front
    of ``keys`` / ``values`` (flat, one per layer), which may be shared with other shapes.
    """

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        rows: int,
        heads: int,
        slots: int,
        dim: int,
    ) -> None:
        size = rows * heads * slots * dim
        self.keys = [k[:size].view(rows, heads, slots, dim) for k in keys]
        self.values = [v[:size].view(rows, heads, slots, dim) for v in values]
        self.write_index = torch.zeros(
            1, dtype=torch.long, device=keys[0].device
        )  # set by the decoder
        self.rows = rows  # how many leading rows the current forward covers

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.keys[layer_idx][: self.rows]
        values = self.values[layer_idx][: self.rows]
        index = self.write_index
        if index.device != keys.device:  # a layer on another GPU than the step's state
            index = index.to(keys.device, non_blocking=True)
        keys.index_copy_(2, index, key)
        values.index_copy_(2, index, value)
        return keys, values


class _Workspace:
    """Everything one decode step touches, preallocated for ``rows`` x ``slots``. The KV cache and
    the answers (``out``: a row's answer is shorter than its slots) are views of ``pools``."""

    def __init__(self, decoder: BatchDecoder, rows: int, slots: int, pools: _Pools) -> None:
        d, dev = decoder, decoder.device
        self.rows, self.slots = rows, slots
        self.cache = _StaticKV(pools.keys, pools.values, rows, d.kv_heads, slots, d.head_dim)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=dev)
        self.pad = torch.zeros(rows, dtype=torch.long, device=dev)
        self.limit = torch.zeros(rows, dtype=torch.long, device=dev)  # max_new_tokens per row
        self.honour_eos = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.out = pools.out[: rows * slots].view(rows, slots)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)  # tokens generated so far
        self.length = torch.zeros(rows, dtype=torch.long, device=dev)  # tokens kept per row
        self.write_pos = torch.zeros(1, dtype=torch.long, device=dev)  # slot of the next token
        self.slot_ids = torch.arange(slots, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None


class _Pools:
    """Flat buffers for ``row_slots`` rows x slots: per layer K and V, and the answers' tokens."""

    def __init__(self, decoder: BatchDecoder, row_slots: int) -> None:
        d = decoder
        self.row_slots = row_slots
        size = row_slots * d.kv_heads * d.head_dim
        # Each layer's cache on that layer's device (they differ when the model spans GPUs).
        self.keys = [torch.zeros(size, dtype=d.dtype, device=dev) for dev in d.layer_devices]
        self.values = [torch.zeros(size, dtype=d.dtype, device=dev) for dev in d.layer_devices]
        self.out = torch.zeros(row_slots, dtype=torch.long, device=d.device)


class BatchDecoder:
    def __init__(
        self,
        loaded: Any,
        *,
        cuda_graphs: bool = True,
        max_batch_jobs: int = 256,
        max_batch_tiles: int = 512,
        kv_budget: int = 0,
        stats: EngineStats | None = None,
    ) -> None:
        model = loaded.model
        self.model = model
        self.capture_lock = threading.Lock()  # held while a decode graph is captured
        self.device: torch.device = loaded.device
        self.dtype: torch.dtype = loaded.dtype
        self.text = model.model.language_model
        self.lm_head = model.lm_head
        self.embed = self.text.get_input_embeddings()
        config = model.config
        self.vision_layer = config.vision_feature_layer
        self.vision_strategy = config.vision_feature_select_strategy
        self.image_token_id = int(config.image_token_id)
        self.image_tokens_per_tile = int(loaded.processor.image_seq_length)
        text = config.text_config
        # The text layers' decode-step attention reads the static cache per K/V group
        # (attention.py); their prefill and the vision tower keep sdpa.
        text._attn_implementation = GROUPED_DECODE
        self.n_layers = text.num_hidden_layers
        self.context_tokens = int(text.max_position_embeddings)  # prompt + answer, at most
        self.kv_heads = text.num_key_value_heads
        self.head_dim = (
            getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        )
        # The greedy policy of model.generate under this checkpoint's generation config.
        gen = model.generation_config
        eos = gen.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = torch.tensor(eos_ids, dtype=torch.long, device=self.device)
        self.suppress_ids = torch.tensor(
            list(gen.suppress_tokens or []), dtype=torch.long, device=self.device
        )
        self.min_new_tokens = int(gen.min_new_tokens or 0)
        self.pad_id = int(gen.pad_token_id if gen.pad_token_id is not None else (eos_ids or [0])[0])
        # The device of each decoder layer's weights: the first GPU's, except in a model that
        # spans GPUs (device_map.py), whose layers are split between them.
        self.layer_devices = [_device_of(layer, self.device) for layer in self.text.layers]
        self.sharded = len({_device_of(self.embed, self.device), *self.layer_devices}) > 1
        self.use_graphs = cuda_graphs and self.device.type == "cuda" and not self.sharded
        if cuda_graphs and self.device.type == "cuda" and self.sharded:
            log.warning(
                "decode: CUDA graphs are off: the model spans %d GPUs, and a decode step that "
                "crosses GPUs cannot be captured as one graph; its steps run kernel by kernel",
                len(set(self.layer_devices) | {self.device}),
            )
        # Benchmarks set this to get, per batch, where the time goes (it synchronises the GPU
        # between phases, so it is off in service).
        self.profile = False
        self.profile_log: list[tuple[int, dict[str, float]]] = []  # (batch size, phase ms)
        self.stats = stats or EngineStats()
        # Every decode shape the batcher can form within the KV budget; one shared KV buffer.
        self.plan: DecodePlan = plan_decode(
            max_batch_jobs=max_batch_jobs,
            kv_budget=kv_budget or default_kv_budget(max_batch_tiles, self.image_tokens_per_tile),
            context_tokens=self.context_tokens,
        )
        self._pools: _Pools | None = None  # allocated with the first planned workspace
        self._workspaces: dict[tuple[int, int], _Workspace] = {}
        self._graph_pool: Any = None  # one memory pool for every graph's temporaries
        # One stream for every capture's warm-up steps: the allocator caches freed blocks per
        # stream, so a new stream per capture would strand its warm-up's memory.
        self._warmup_stream: Any = None
        self.serving = False  # set by prepare(): a capture from now on stalls a batch
        self._prepare_lock = threading.Lock()  # prepare() may run in a start-up thread

    # -- public -----------------------------------------------------------------------------------
    def problem_with(self, request: EngineRequest) -> str | None:
        """Why ``request`` cannot join a batch (it would fail the batch), or None.

        The vision tower yields ``image_tokens_per_tile`` embeddings per tile, one for each image
        token of the prompt; a mismatch would fail the whole batch's embedding merge.
        """
        image_tokens = int((request.input_ids == self.image_token_id).sum())
        expected = request.tiles * self.image_tokens_per_tile
        if image_tokens != expected:
            return (
                f"the prompt holds {image_tokens} image tokens where its {request.tiles} tile(s) "
                f"need {expected}"
            )
        if request.prompt_tokens >= self.context_tokens:
            return (
                f"the prompt is {request.prompt_tokens} tokens long; the model's context is "
                f"{self.context_tokens}"
            )
        return None

    @torch.inference_mode()  # as in run(): else autograd keeps every captured step's activations
    def prepare(self) -> None:
        """With CUDA graphs, build every planned workspace and capture its graph, before serving
        (without, workspaces are built as batches need them). Once: a second call waits for the
        first, and returns (or tries again if the first failed)."""
        with self._prepare_lock:
            if not self.serving:
                if self.use_graphs:
                    self._capture_plan()
                self.serving = True

    def _capture_plan(self) -> None:
        allocated, reserved = _memory_mb(self.device)
        started = time.perf_counter()
        for rows, slots in self.plan.shapes:
            self._planned(rows, slots)
        now_allocated, now_reserved = _memory_mb(self.device)
        workspace_mb, reserved_mb = now_allocated - allocated, now_reserved - reserved
        self.stats.workspaces_ready(
            shapes=len(self.plan.shapes), allocated_mb=workspace_mb, reserved_mb=reserved_mb
        )
        log.info(
            "decode: %d shapes (rows x slots, KV budget %d row-slots) captured in %.1f s; "
            "workspaces %.0f MiB allocated, %.0f MiB reserved with the graphs' temporaries",
            len(self.plan.shapes),
            self.plan.kv_budget,
            time.perf_counter() - started,
            workspace_mb,
            reserved_mb,
        )

    def release_memory(self) -> None:
        """Return cached free memory (after an out-of-memory error). With graphs the planned
        workspaces stay: they are bounded, and rebuilding them would capture while serving."""
        if not self.use_graphs:
            self._workspaces.clear()
            self._pools = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def run(
        self,
        batch: Sequence[EngineRequest],
        should_stop: Callable[[int], StopReason | None],
        check_every: int = 8,
    ) -> list[DecodeOutput]:
        """Answer ``batch`` greedily. ``should_stop(i)`` is asked every ``check_every`` steps for
        each running row (deadline, cancellation); a row it stops keeps the tokens it has."""
        n = len(batch)
        prompt_len = max(r.prompt_tokens for r in batch)
        max_new = max(r.max_new_tokens for r in batch)
        ws = self._workspace(rows=n, slots=prompt_len + max_new)

        marks = [self._mark()]
        embeds, pad = self._embed_batch(batch, prompt_len)
        marks.append(self._mark())
        self._reset(ws, batch, pad)
        first = self._prefill(ws, embeds, pad, prompt_len, n)
        self._record(ws, first, step0=True)
        marks.append(self._mark())
        stopped: dict[int, StopReason] = {}
        for step in range(1, max_new):
            if step % check_every == 0 and self._check(ws, n, should_stop, stopped):
                break
            if ws.graph is not None:
                ws.graph.replay()
            else:
                self._decode_step(ws)
        outputs = self._collect(ws, batch, stopped, max_new)
        marks.append(self._mark())
        if self.profile:
            names = ("vision", "prefill", "decode")
            phases = {
                name: (b - a) * 1000
                for name, a, b in zip(names, marks[:-1], marks[1:], strict=True)
            }
            self.profile_log.append((n, phases))
        return outputs

    def _mark(self) -> float:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    # -- stages ------------------------------------------------------------------------------------
    def _embed_batch(
        self, batch: Sequence[EngineRequest], prompt_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(batch), prompt_len), self.pad_id, dtype=torch.long)
        pad = torch.empty(len(batch), dtype=torch.long)
        for row, request in enumerate(batch):
            pad[row] = prompt_len - request.prompt_tokens
            ids[row, pad[row] :] = request.input_ids
        ids = ids.to(self.device, non_blocking=True)
        resident = []
        for request in batch:
            pixels = request.device_pixels
            if pixels is None:  # not admitted through the engine (benchmarks, tests)
                pixels = request.pixel_values
            elif request.uploaded is not None:  # copied to the GPU on the upload stream
                torch.cuda.current_stream().wait_event(request.uploaded)
                pixels.record_stream(torch.cuda.current_stream())
            resident.append(pixels)
        pixels = torch.cat(resident).to(self.device, self.dtype, non_blocking=True)
        features = self.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=self.vision_layer,
            vision_feature_select_strategy=self.vision_strategy,
        ).pooler_output
        embeds = self.embed(ids)
        image_slots = ids == self.image_token_id
        embeds[image_slots] = features.reshape(-1, embeds.shape[-1]).to(embeds.device, embeds.dtype)
        return embeds, pad.to(self.device)

    def _reset(self, ws: _Workspace, batch: Sequence[EngineRequest], pad: torch.Tensor) -> None:
        n = len(batch)
        ws.pad.zero_()
        ws.pad[:n] = pad
        ws.limit.fill_(1)
        ws.limit[:n] = torch.tensor([r.max_new_tokens for r in batch], device=self.device)
        ws.honour_eos.fill_(False)
        ws.honour_eos[:n] = torch.tensor([not r.ignore_eos for r in batch], device=self.device)
        ws.done.fill_(True)  # spare rows of the bucket are finished from the start
        ws.done[:n] = False
        ws.out.fill_(self.pad_id)
        ws.step.zero_()
        ws.length.zero_()

    def _prefill(
        self, ws: _Workspace, embeds: torch.Tensor, pad: torch.Tensor, prompt_len: int, n: int
    ) -> torch.Tensor:
        positions = torch.arange(prompt_len, device=self.device)
        position_ids = (positions[None, :] - pad[:, None]).clamp(min=0)
        visible = (ws.slot_ids[None, None, :] >= pad[:, None, None]) & (
            ws.slot_ids[None, None, :] <= positions[None, :, None]
        )
        ws.cache.rows, ws.cache.write_index = n, positions
        hidden = self._layers(embeds, position_ids, visible[:, None], ws.cache)
        # From here on the cache writes where the decode steps (and their graph) point it.
        ws.cache.rows, ws.cache.write_index = ws.rows, ws.write_pos
        ws.write_pos.fill_(prompt_len)
        return self._greedy(self.lm_head(hidden[:, -1]), ws, rows=n)

    def _layers(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, cache: _StaticKV
    ) -> torch.Tensor:
        cos_sin = self.text.rotary_emb(hidden, position_ids)
        here = hidden.device
        for layer, device in zip(self.text.layers, self.layer_devices, strict=True):
            if self.sharded and device != here:
                # The next GPU's layers: the step's inputs cross once, not once per layer (the
                # layers' own hooks would move them again for each layer).
                hidden, mask, position_ids = (t.to(device) for t in (hidden, mask, position_ids))
                cos_sin = tuple(t.to(device) for t in cos_sin)
                here = device
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                position_embeddings=cos_sin,
            )
        if self.sharded:
            hidden = hidden.to(self.device)  # the norm and LM head are on the first GPU
        result: torch.Tensor = self.text.norm(hidden)
        return result

    def _greedy(
        self, logits: torch.Tensor, ws: _Workspace, rows: int | None = None
    ) -> torch.Tensor:
        """Greedy choice under the checkpoint's suppress_tokens / min_new_tokens / eos rules."""
        if self.sharded:  # the step's state is on the first GPU, wherever the LM head is
            logits = logits.to(self.device)
        logits = logits.float()
        if self.suppress_ids.numel():
            logits[:, self.suppress_ids] = float("-inf")
        if self.min_new_tokens and self.eos_ids.numel():
            # A tensor condition, not a Python branch, so that the graph can replay it.
            early = (ws.step < self.min_new_tokens).to(logits.dtype)
            logits[:, self.eos_ids] -= early * 1e30
        chosen = logits.argmax(-1)
        if rows is not None and rows < ws.rows:
            full = torch.full((ws.rows,), self.pad_id, dtype=torch.long, device=self.device)
            full[:rows] = chosen
            chosen = full
        return chosen

    def _record(self, ws: _Workspace, chosen: torch.Tensor, step0: bool = False) -> None:
        """Store this step's tokens; finished rows keep padding; advance the step counters."""
        chosen = torch.where(ws.done, torch.full_like(chosen, self.pad_id), chosen)
        ws.out.index_copy_(1, ws.step, chosen[:, None])
        ws.length += (~ws.done).long()
        ended = torch.isin(chosen, self.eos_ids) & ws.honour_eos
        ws.done |= ended | (ws.step + 1 >= ws.limit)
        ws.tokens.copy_(chosen)
        ws.step += 1
        if not step0:
            ws.write_pos += 1

    def _decode_step(self, ws: _Workspace) -> None:
        position_ids = (ws.write_pos - ws.pad)[:, None]
        visible = (ws.slot_ids[None, :] >= ws.pad[:, None]) & (ws.slot_ids[None, :] <= ws.write_pos)
        hidden = self._layers(
            self.embed(ws.tokens[:, None]), position_ids, visible[:, None, None], ws.cache
        )
        self._record(ws, self._greedy(self.lm_head(hidden[:, -1]), ws))

    def _check(
        self,
        ws: _Workspace,
        n: int,
        should_stop: Callable[[int], StopReason | None],
        stopped: dict[int, StopReason],
    ) -> bool:
        """Host-side look between steps; True when every real row is finished."""
        done = ws.done[:n].tolist()
        for row in range(n):
            if not done[row] and row not in stopped:
                reason = should_stop(row)
                if reason is not None:
                    stopped[row] = reason
                    done[row] = True
        if stopped:
            ws.done[list(stopped)] = True
        return all(done)

    def _collect(
        self,
        ws: _Workspace,
        batch: Sequence[EngineRequest],
        stopped: dict[int, StopReason],
        max_new: int,
    ) -> list[DecodeOutput]:
        n = len(batch)
        out, lengths = ws.out[:n, :max_new].tolist(), ws.length[:n].tolist()
        eos = set(self.eos_ids.tolist())
        results = []
        for row, request in enumerate(batch):
            tokens = out[row][: lengths[row]]
            if not request.ignore_eos and tokens and tokens[-1] in eos:
                stop = StopReason.EOS
            elif row in stopped and len(tokens) < request.max_new_tokens:
                stop = stopped[row]
            else:
                stop = StopReason.LENGTH
            results.append(DecodeOutput(tokens=tokens, stop=stop))
        return results

    # -- workspaces and graphs -----------------------------------------------------------------
    def _workspace(self, rows: int, slots: int) -> _Workspace:
        """The planned workspace for ``rows`` needing ``slots``; outside the plan, a workspace of
        the batch's own (no graph: its steps run one by one), dropped after the batch."""
        shape = self.plan.shape_for(rows, slots)
        if shape is not None:
            return self._planned(*shape)
        rows, slots = bucket(rows, self.plan.row_buckets), bucket(slots, SLOT_BUCKETS)
        self.stats.uncaptured_batch()
        log.info("decode: rows=%d slots=%d is outside the plan: no graph for it", rows, slots)
        return _Workspace(self, rows, slots, _Pools(self, rows * slots))

    def _planned(self, rows: int, slots: int) -> _Workspace:
        ws = self._workspaces.get((rows, slots))
        if ws is None:
            if self.use_graphs:  # the whole budget at once: graphs hold their buffers' addresses
                if self._pools is None:
                    self._pools = _Pools(self, self.plan.kv_budget)
            elif self._pools is None or self._pools.row_slots < rows * slots:
                # No graphs (the CPU): the buffer grows to the largest shape met, as it did
                # before the plan, rather than holding the whole budget from the start.
                self._workspaces.clear()  # views of the smaller buffer
                self._pools = _Pools(self, rows * slots)
            ws = _Workspace(self, rows, slots, self._pools)
            if self.use_graphs:
                self._capture(ws)
            self._workspaces[(rows, slots)] = ws
        return ws

    def _capture(self, ws: _Workspace) -> None:
        started = time.perf_counter()
        ws.done.fill_(True)
        ws.limit.fill_(1)
        ws.cache.write_index = ws.write_pos
        if self._warmup_stream is None:
            self._warmup_stream = torch.cuda.Stream(self.device)
        stream = self._warmup_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: lazy initialisation must not happen inside the capture
                self._decode_step(ws)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        # The engine's uploader holds capture_lock for its CUDA calls, so none runs mid-capture;
        # thread_local keeps any other thread's (a benchmark's, a test's) from failing it. One
        # memory pool serves every graph: each keeps its results in its workspace, so its
        # temporaries are dead once it has run, and graphs run one at a time, on one stream.
        with (
            self.capture_lock,
            torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"),
        ):
            self._decode_step(ws)
        ws.graph = graph
        seconds = time.perf_counter() - started
        self.stats.graph_captured(seconds, serving=self.serving)
        log.log(
            logging.WARNING if self.serving else logging.DEBUG,
            "captured decode graph rows=%d slots=%d in %.0f ms%s",
            ws.rows,
            ws.slots,
            seconds * 1000,
            " while serving (a batch waited for it)" if self.serving else "",
        )


def _device_of(module: torch.nn.Module, default: torch.device) -> torch.device:
    """Where ``module``'s weights are (``default`` for one without any)."""
    parameter = next(module.parameters(), None)
    return default if parameter is None else parameter.device


def _memory_mb(device: torch.device) -> tuple[float, float]:
    """Device memory allocated and reserved by torch, in MiB, once the device is idle (0 off
    CUDA: a test prepares the CPU decoder as if it had graphs)."""
    if device.type != "cuda":
        return 0.0, 0.0
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20
