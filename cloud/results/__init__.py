"""Results: what the figures are, at any reporting unit, read from the database alone.

    results.py   load_results: totals, ballots, turnout, precincts reporting at one unit;
                 the mapping behind ``--json`` and the rich tables
    rollups.py   rolling per-precinct figures up the reporting-unit tree (where a rollup is summed)
    windows.py   ballots over time: the tumbling windows the ledger writes in its transaction
                 (write_windows), the window width setting, and windows recomputed from the ledger
    trend.py     the windows of one unit for people (``cloud results --windows``)
"""
