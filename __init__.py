"""toolscript, installed as one package: the checkout's flat modules, under one name.

It imports nothing, so `import toolscript.storage` (or running the CLI) loads only what it
uses. The CLI is `toolscript.toolscript`; `python -m toolscript` runs it.
"""
