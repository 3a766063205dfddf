"""The gateway's durable buffer: one SQLite file (WAL) that holds every batch until the cloud has it.

    schema.py        the tables, row states, how a buffer file is recognised, SQLite errors
    store.py         Buffer: put_many / fetch_pack / confirm / release, retention purge, usage
    rows.py          the values it takes in and hands out (NewMessage, OutboundMessage, Usage)
    file.py          opening a file: engine and pragmas, WAL mark, flock, migrations
    backpressure.py  Quota: how much the writer may take in, given the buffer's limits
    migrations/      Alembic migrations of the buffer, run when a gateway opens the file
"""
