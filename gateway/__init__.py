"""EdgeTally edge gateway: verify device batches, keep them on disk, forward them to the cloud.

    config.py      GatewayConfig, the one frozen configuration value
    schema.py      the buffer's table, states, and how a buffer file is recognised
    buffer.py      the SQLite (WAL) buffer: put_many / fetch_pack / confirm / release
    migrations/    Alembic migrations of the buffer, run at open
    ingress.py     edge link (manual acks), bounded queue, group-commit writer
    uplink.py      cloud link: QoS 1 window, delete on PUBACK; receipts relayed down
    links.py       paho client construction, status messages, backoff
    service.py     composes the threads under a supervisor; graceful stop
    inspect.py     read-only buffer statistics
    cli.py         `edgetally gateway run` and `edgetally gateway buffer stats`
"""
