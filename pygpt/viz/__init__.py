"""Figures: training diagnostics (activations, gradients, update ratios) and loss curves.

Each `pygpt viz` subcommand is a module here with ``add_arguments(parser)`` and ``run(args)``, listed in
pygpt/commands/viz.py. The modules import matplotlib only when they draw (with the Agg backend).
"""
