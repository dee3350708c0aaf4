"""`GET /metrics`: what an operator watches, in Prometheus text, on a registry of the server's own."""

from __future__ import annotations

from panda_edge.optional import require

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DECODE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServerMetrics:
    def __init__(self) -> None:
        prometheus = require("prometheus_client", "serve")
        self.registry = prometheus.CollectorRegistry()
        self._render = prometheus.generate_latest
        self.content_type = prometheus.CONTENT_TYPE_LATEST
        self.requests = prometheus.Counter(
            "panda_requests", "Chat completion requests by HTTP status.", ["status"], registry=self.registry
        )
        self.ttft = prometheus.Histogram(
            "panda_time_to_first_token_seconds",
            "From the request's arrival (queue wait included) to its first token.",
            buckets=TTFT_BUCKETS_S,
            registry=self.registry,
        )
        self.decode = prometheus.Histogram(
            "panda_decode_tokens_per_second",
            "Decode speed of each answer.",
            buckets=DECODE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = prometheus.Gauge(
            "panda_queue_depth", "Requests waiting for the decoder.", registry=self.registry
        )
        self.prefix = prometheus.Counter(
            "panda_video_prefix",
            "How each answer had its video prefix: computed, memory or disk.",
            ["how"],
            registry=self.registry,
        )
        self.prompt_tokens = prometheus.Counter(
            "panda_prompt_tokens", "Prompt tokens, visual tokens included.", registry=self.registry
        )
        self.completion_tokens = prometheus.Counter(
            "panda_completion_tokens", "Generated tokens.", registry=self.registry
        )

    def render(self) -> bytes:
        return self._render(self.registry)
