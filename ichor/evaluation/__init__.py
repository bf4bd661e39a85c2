"""Judging an encoder's features: pooling, attentive pooling, frozen features, linear probes, the online probe."""
