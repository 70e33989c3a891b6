"""What every stage shares: errors a user can act on, files written whole, JSONL files of objects with ids."""
