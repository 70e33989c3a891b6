"""Judges: take (prompt, response) text and return typed labels; they never see engines or routing."""
