"""`edgetally entry`: a data-entry station keying precinct tally sheets, double-keyed.

Two operators key the same paper sheet independently (``entry key``), each signing the sheet
as keyed with their own Ed25519 key; when they agree the station signs one batch from the
precinct's manual source (its own device id, key and chain) and publishes it to the edge
broker like a tabulator; when they disagree nothing is sent until a supervisor resolves it
(``entry conflicts``, ``entry resolve``). Corrections are new batches of deltas with a reason
(``entry correct``). The wire form is docs/protocol.md section 16 (protocol/entry.py).
"""
