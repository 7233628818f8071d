"""Offline CLIs (genlip-data): tokenizer training, raw -> shards, packing, verify, inspect.
The shard format itself lives in the library (genlip.data)."""
