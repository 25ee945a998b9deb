"""Collectors: attention rows recorded during a real prefill pass, and dataset-scale collection."""
from .record import AttentionRecord, SampleAttention, record_attention
from .rows import attention_rows
from .tap import tap_attention

__all__ = ["AttentionRecord", "SampleAttention", "attention_rows", "record_attention", "tap_attention"]
