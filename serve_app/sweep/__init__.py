"""``accuwatt sweep FILE``: the study's topology experiments: ``cli.py`` (the subcommand), ``config.py``
(the sweep file), ``runner.py`` (deploy, replay and compare each topology), ``compare.py`` (the sweep's
tables). The package itself imports nothing."""
