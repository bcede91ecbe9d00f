"""Experiments of jaxmpc: the paper's four problems and the Fashion-MNIST acceptance run.

Each problem is a folder with a ``config.py`` exposing ``get_config()`` (an
:class:`experiments.common.Experiment`); ``experiments/run.py`` is the one entry point and
:func:`experiments.common.run` the importable function behind it. See ``experiments/README.md``.
The library never imports this package; it uses only the public ``jaxmpc`` API.
"""
