"""The audit: everything the cloud stored, re-checked against the ledger and the registry.

    audit.py     run_audit: one read snapshot, the passes, the report (``cloud audit``)
    checks.py    the passes: signatures, hash chains, seq gaps, finals against their deltas,
                 every tally and window recomputed from the ledger
    report.py    AuditReport: the checks and their discrepancies, for people and for ``--json``
"""
