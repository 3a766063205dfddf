"""Inspecting a gateway's buffer file: the ``edgetally gateway buffer ...`` commands.

All of them work on the file of a running gateway too (read-only snapshots, short writes).

    snapshot.py  what the commands share: read snapshots, short write transactions; stats
    quarantine.py  the quarantine part of stats: held vs caps, dropped rejects per device, reason
    rows.py      ls, show, quarantine, export (read-only)
    actions.py   retry, purge (short write transactions)
    check.py     check: integrity, schema, counters, every payload
    recover.py   salvage every readable row of a damaged buffer into a new file
    scan.py      recover's two reading passes: what SQLite can reach, then the raw pages
    pages.py     reading a damaged SQLite file page by page (WAL-aware), recover's last resort
    render.py    the rich tables of the commands (every command also has --json)
"""
