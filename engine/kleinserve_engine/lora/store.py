"""Adapters cached by content hash, bounded in bytes on the host and on the device.

The control plane fetches adapters and names them by local path plus sha256. With a sha256 a cached adapter is
found without touching the file; without one, the file is hashed once per (path, size, mtime). Host entries are the
converted CPU tensors; device entries are their copies on the model's device (the same tensors on a CPU engine).
"""

from __future__ import annotations

import os
import threading
import time
import torch

from ..caches import ByteLRU
from ..uploads import upload
from .adapter import Adapter, AdapterLimits, linear_shapes, parse, read
from .formats import Delta, Resolver
from .spec import InvalidLora, LoraOptions, LoraSpec

MiB = 1 << 20


class LoraMetrics:
    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        p = "kleinserve_engine_lora_"
        self.hits = Counter(p + "cache_hits", "adapter cache hits", ["tier"], registry=registry)
        self.misses = Counter(p + "cache_misses", "adapter cache misses", ["tier"], registry=registry)
        self.evictions = Counter(p + "cache_evictions", "adapters evicted to stay within the byte bound", ["tier"], registry=registry)
        self.bytes = Gauge(p + "cache_bytes", "bytes of adapters held", ["tier"], registry=registry)
        self.entries = Gauge(p + "cache_entries", "adapters held", ["tier"], registry=registry)
        self.load_seconds = Histogram(p + "load_seconds", "time to make an uncached adapter usable", ["stage"],
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=registry)


class AdapterStore:
    def __init__(self, transformer, dtype: torch.dtype, device: torch.device, options: LoraOptions | None = None,
                 registry=None):
        self.options = options or LoraOptions()
        self.limits = AdapterLimits(max_rank=self.options.max_rank, max_bytes=int(self.options.max_mb * MiB))
        self.shapes = linear_shapes(transformer)
        self.resolver = Resolver(self.shapes)
        self.dtype, self.device = dtype, device
        self.host = ByteLRU("lora_host", int(self.options.host_cache_mb * MiB))
        self.on_device = device.type != "cpu"
        self.dev = ByteLRU("lora_device", int(self.options.device_cache_mb * MiB)) if self.on_device else None
        self._hashes: dict[tuple, str] = {}  # (realpath, size, mtime_ns) -> sha256, for requests that name no hash
        self._lock = threading.Lock()
        self._evicted = {"host": 0, "device": 0}
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        self.metrics = LoraMetrics(registry)

    # -- host tier: called from the preprocessing threads --------------------------------------------------------
    def resolve(self, specs: list[LoraSpec]) -> list[tuple[Adapter, float]]:
        return [(self.adapter(spec, i), spec.scale) for i, spec in enumerate(specs)]

    def adapter(self, spec: LoraSpec, index: int) -> Adapter:
        sha = spec.sha256 or self._known_hash(spec.path)
        if sha is not None:
            found = self.host.get(sha)
            if found is not None:
                self.metrics.hits.labels("host").inc()
                return found
        t0 = time.perf_counter()
        data, actual = read(spec.path, index, self.limits)
        if spec.sha256 is not None and actual != spec.sha256:
            raise InvalidLora(index, "hash_mismatch", f"the file's sha256 is {actual}, the request named {spec.sha256}")
        self._remember_hash(spec.path, actual)
        found = self.host.get(actual)  # same content under another path
        if found is not None:
            self.metrics.hits.labels("host").inc()
            return found
        self.metrics.misses.labels("host").inc()
        adapter = parse(data, index, self.shapes, self.resolver, self.limits, self.dtype, actual)
        self.host.put(actual, adapter, adapter.nbytes)
        self.metrics.load_seconds.labels("file").observe(time.perf_counter() - t0)
        self._observe()
        return adapter

    def _stat_key(self, path: str):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (os.path.realpath(path), st.st_size, st.st_mtime_ns)

    def _known_hash(self, path: str) -> str | None:
        key = self._stat_key(path)
        with self._lock:
            return self._hashes.get(key) if key else None

    def _remember_hash(self, path: str, sha: str) -> None:
        key = self._stat_key(path)
        if key:
            with self._lock:
                if len(self._hashes) > 4096:
                    self._hashes.clear()
                self._hashes[key] = sha

    # -- device tier: called from the inference thread ---------------------------------------------------------
    def on_model_device(self, adapter: Adapter) -> dict[str, Delta]:
        if not self.on_device:
            return adapter.modules
        found = self.dev.get(adapter.sha256)
        if found is not None:
            self.metrics.hits.labels("device").inc()
            return found
        self.metrics.misses.labels("device").inc()
        t0 = time.perf_counter()
        moved, copies = {}, {}
        for name, d in adapter.modules.items():
            # queued like a kernel, so a cache miss never makes the inference thread wait for the batch before
            down = copies.get(id(d.down))
            if down is None:
                down = copies[id(d.down)] = upload(d.down, self.device)
            moved[name] = Delta(down=down, up=upload(d.up, self.device), scale=d.scale)
        self.dev.put(adapter.sha256, moved, adapter.nbytes)
        self.metrics.load_seconds.labels("device").observe(time.perf_counter() - t0)
        self._observe()
        return moved

    def _observe(self) -> None:
        with self._lock:
            for tier, cache in (("host", self.host), ("device", self.dev)):
                if cache is None:
                    continue
                self.metrics.bytes.labels(tier).set(cache.bytes)
                self.metrics.entries.labels(tier).set(len(cache))
                if cache.evictions > self._evicted[tier]:
                    self.metrics.evictions.labels(tier).inc(cache.evictions - self._evicted[tier])
                    self._evicted[tier] = cache.evictions

    def clear(self) -> None:
        self.host.clear()
        if self.dev is not None:
            self.dev.clear()
        with self._lock:
            self._hashes.clear()
        self._observe()
