"""Prometheus metrics of one engine process (text exposition via prometheus_client, own registry)."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # *_created series add nothing for a scrape of one process

STAGES = ("queue", "text_encode", "vae_encode", "denoise", "decode", "safety_check", "image_encode", "total")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "kleinserve_engine_"
        self.requests = Counter(p + "requests", "generate requests by outcome", ["outcome"], registry=r)
        self.frames_rejected = Counter(p + "bad_frames", "frames rejected before reaching a request", ["code"], registry=r)
        self.batch_size = Histogram(p + "batch_size", "images per denoise batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=r)
        self.stage = Histogram(p + "stage_seconds", "per-request stage latency", ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter(p + "cache_hits", "cache hits", ["cache"], registry=r)
        self.cache_misses = Counter(p + "cache_misses", "cache misses", ["cache"], registry=r)
        self.cache_bytes = Gauge(p + "cache_bytes", "bytes held by a cache", ["cache"], registry=r)
        self.cache_entries = Gauge(p + "cache_entries", "entries held by a cache", ["cache"], registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "requests waiting for the inference thread", registry=r)
        self.in_flight = Gauge(p + "in_flight", "requests accepted and not yet answered", registry=r)
        self.ready = Gauge(p + "ready", "1 once the model is loaded and warmed up", registry=r)
        self.warmup_seconds = Gauge(p + "warmup_seconds", "time spent loading and warming up", registry=r)
        # a rise after ready means a request waited on torch.compile (fastpath.py's regional compile should not)
        self.compiled_graphs = Gauge(p + "compiled_graphs", "torch.compile graphs built by this process", registry=r)

    def observe_timings(self, timings_ms: dict) -> None:
        for stage in STAGES:
            if stage + "_ms" in timings_ms:
                self.stage.labels(stage).observe(timings_ms[stage + "_ms"] / 1000.0)

    def observe_caches(self, caches) -> None:
        for cache in caches:
            self.cache_bytes.labels(cache.name).set(cache.bytes)
            self.cache_entries.labels(cache.name).set(len(cache))

    def render(self) -> bytes:
        if "torch._dynamo" in sys.modules:  # never import torch here: the loop thread must not block on it
            from .fastpath import compiled_graphs

            self.compiled_graphs.set(compiled_graphs())
        return generate_latest(self.registry)
