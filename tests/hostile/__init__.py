"""End-to-end tests of lstm-inspect on broken and hostile files, through the real CLI (issue 6)."""
