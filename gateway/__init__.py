"""EdgeTally edge gateway: verify device batches, keep them on disk, forward them to the cloud.

    config.py      GatewayConfig, the one frozen configuration value
    buffer/        the SQLite (WAL) buffer: schema, store (put_many / fetch_pack / confirm /
                   release, retention purge, usage), backpressure quota, migrations
    verify.py      classify: where a batch is verified (a pending row, or quarantined with its reason)
    ingress.py     edge link (manual acks), bounded queue, group-commit writer; acks after commit
    uplink.py      cloud link: QoS 1 window, bundles, delivered on PUBACK, keepalive;
                   receipts relayed down; purge of expired delivered rows
    links.py       paho client construction, link status messages and wills, backoff
    status.py      the health status published on both brokers every few seconds
    service.py     composes the threads under a supervisor; graceful stop
    inspect/       the `buffer` commands: stats, ls, show, check, retry, purge, recover
    cli.py         `edgetally gateway run` and `edgetally gateway buffer ...`
"""
