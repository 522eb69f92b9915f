"""vLLM's prefix-cache statistics as Prometheus metrics, for every service whose engine is vLLM.

vLLM's scheduler counts, per step, the prompt tokens it looked up in its prefix cache and the
ones it found there. A stat logger handed to ``AsyncLLM`` (``stat_loggers``; vLLM's own loggers
stay off) adds them to two counters in this process's registry, which every service's
``/metrics`` serves: the hit ratio is ``rate(cai_engine_prefix_cache_hits_total) /
rate(cai_engine_prefix_cache_queries_total)``. For the judge, whose prompts share the few-shot
prefix, it says whether the prefix layout pays (see ``bench/judge.py``).
"""

from __future__ import annotations

from prometheus_client import Counter

PREFIX_CACHE_QUERIES = Counter("cai_engine_prefix_cache_queries", "Prompt tokens vLLM looked up in its prefix cache.")
PREFIX_CACHE_HITS = Counter(
    "cai_engine_prefix_cache_hits", "Prompt tokens vLLM found in its prefix cache (not computed again)."
)


def prefix_cache_logger():
    """The stat-logger class to pass to ``AsyncLLM.from_engine_args(..., stat_loggers=[...])``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class PrefixCacheLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            stats = getattr(scheduler_stats, "prefix_cache_stats", None)
            if stats is None:
                return
            if stats.queries:
                PREFIX_CACHE_QUERIES.inc(stats.queries)
            if stats.hits:
                PREFIX_CACHE_HITS.inc(stats.hits)

        def log_engine_initialized(self):
            pass

    return PrefixCacheLogger
