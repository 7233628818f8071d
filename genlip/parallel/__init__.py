"""Parallelism applied around the plain model: tensor-parallel kit, state-dict (un)sharding."""
