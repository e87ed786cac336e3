"""Renderers: plain data from `lstm_inspect.commands` to tables, Markdown, JSON, JUnit, GitHub
annotations. rich is imported only where a table is drawn."""
