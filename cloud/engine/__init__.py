"""The rules engine: what runs a rules file's rules around the ledger's one transaction.

The rule language itself (parse, compile, evaluate) is :mod:`cloud.rules`; this package is
what the cloud does with it.

    rulefile.py  the rules file (YAML or TOML), loaded once into a frozen RulesConfig
    engine.py    RulesEngine: each group's rules evaluated, actions run, the ledger action
                 inside the group's transaction, the error action and dead letters
    actions.py   the actions (ledger, republish, alert, store), their templates and writes
    outputs.py   what the rules wrote (alerts, stored rows, dead letters), read back for people
"""
