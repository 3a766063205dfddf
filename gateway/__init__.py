"""EdgeTally edge gateway: verify device batches, keep them on disk, forward them to the cloud.

    config.py      GatewayConfig, the one frozen configuration value
    schema.py      the buffer's tables, states, how a buffer file is recognised, SQLite errors
    buffer.py      the SQLite (WAL) buffer: put_many / fetch_pack / confirm / release,
                   retention purge, usage counters
    migrations/    Alembic migrations of the buffer, run at open
    ingress.py     edge link (manual acks), bounded queue, group-commit writer
    uplink.py      cloud link: QoS 1 window, bundles, delivered on PUBACK, keepalive;
                   receipts relayed down; purge of expired delivered rows
    links.py       paho client construction, link status messages and wills, backoff
    status.py      the health status published on both brokers every few seconds
    service.py     composes the threads under a supervisor; graceful stop
    inspect/       the `buffer` commands: stats, ls, show, check, retry, purge, recover
    cli.py         `edgetally gateway run` and `edgetally gateway buffer ...`
"""
