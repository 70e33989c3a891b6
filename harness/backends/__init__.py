"""Backends: generate for a list of requests, each with its own intervention, and record routing."""
