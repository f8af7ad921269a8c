"""Threshold alerts: rules in the config, shared state in Redis, delivery to stream, JSONL, log, OTLP and webhook."""
