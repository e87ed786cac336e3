"""CI commands: snapshot, check, diff (registered on the CLI app)."""
