"""The ledger: where every batch is counted exactly once.

    ledger.py    Ledger: verify each envelope against the registry, then record the whole
                 group in ONE transaction (ledger rows, tallies, devices, windows, rejections)
    chain.py     GroupPlan.decide: accepted, duplicate, conflict or refused, per (election,
                 device, seq), decided in memory; the receipt (highest contiguous seq) per device
    store.py     the rows a group reads and writes inside that transaction; seq gaps
    repairs.py   RepairScheduler: when to ask a device for the seqs missing from its chain
"""
