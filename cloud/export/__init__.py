"""`edgetally cloud export`: an election's results per reporting unit in formats other tools
load: NIST SP 1500-100 v2 JSON (``nist.py``) and CSV (``table.py``), both from one read of
the database (``export.py``) with the figures ``cloud results`` shows."""
