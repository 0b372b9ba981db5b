"""The __main__ of a pytest-xdist worker, by name only (see conftest.py): nothing runs here."""
