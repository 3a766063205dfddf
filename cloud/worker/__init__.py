"""The cloud worker: the MQTT side of the cloud, around the ledger.

    worker.py    CloudWorker: batches from the cloud broker into the ledger (cloud/ledger/),
                 acknowledged only after the transaction commits; threads, backoff, sessions
    receipts.py  ReceiptSender: receipts published retained after commit, coalesced per device
                 (the receipt itself is computed in cloud/ledger/chain.py)
    status.py    StatusStore: the latest status of each gateway, stored and shown
"""
