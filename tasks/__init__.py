"""Task definitions and data, installed as `harness._tasks` (see pyproject.toml)."""
