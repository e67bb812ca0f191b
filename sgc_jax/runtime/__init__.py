"""How programs run: XLA compile options, joining the processes of a multi-host run, huge pages."""
