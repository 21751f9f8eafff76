"""``accuwatt report``: the study's tables and figures from replay run folders (``cli.register`` adds the
subcommand; the package itself imports nothing, so importing one of its modules runs no other)."""
