"""A Python self-play actor (`python -m actor_stub`) and offline data generator (`python -m actor_stub.generate`)."""
