"""sandboxmgr's benchmark suite (``python -m bench``, or ``make bench``): bench/run.py is the runner."""
