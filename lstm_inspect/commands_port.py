"""verify and convert commands (registered on the CLI app)."""
