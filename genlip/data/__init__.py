"""Data: shard format, tokenizer, images, packing and the training loader."""
