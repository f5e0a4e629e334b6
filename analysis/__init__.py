"""Reads fedf run logs (``run.jsonl``) and writes paper-style tables and figures.

``runs`` finds, loads and groups run logs; ``tables`` turns groups into the
numbers of the paper's Tables 2-3 and the time-to-target comparison; ``plots``
draws the figures; ``report`` is the ``fedf report`` command. Nothing here
imports the training code: run logs are the only input.
"""
