"""Scheduling: device executors with continuous batching, sampling, routing."""
