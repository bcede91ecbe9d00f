"""Configuration of one experiment (see ``config.py``)."""
