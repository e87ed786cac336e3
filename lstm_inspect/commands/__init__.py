"""The library side of every command: plain functions from paths and options to plain data
(`summary`, `explain`, `split`, `convert`, `verify`, `lockfile` + `expect` for snapshot/check/diff).
Nothing here prints or knows about the command line; `lstm_inspect.cli` calls these and renders."""
