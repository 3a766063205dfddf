"""The fleet: many simulated tabulators, each with its own MQTT connection, in one asyncio loop.

    config.py    FleetConfig (one run's settings); last_seq and withheld_seqs: what each device
                 publishes of its own batches, decided before the first connection
    fleet.py     Fleet: builds the tabulators (signing every batch up front), runs a device
                 runner each, counts what they report and sums the run up
    pacing.py    TokenBucket / RateLimiter (connects and publishes, fleet-wide) and Backoff
                 (one device's reconnects, capped exponential with full jitter)
    runner.py    DeviceRunner: one device's MQTT lifecycle (connect, send, resend, repair,
                 misbehave) until it is done; Supervisor, what it needs of its fleet
    stats.py     FleetStats (counted while the fleet runs), FleetSummary (a run's result), rss_kib
"""
