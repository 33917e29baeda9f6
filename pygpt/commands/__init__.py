"""One module per `pygpt` subcommand: each has ``add_arguments(parser)`` and ``run(args) -> int``."""
