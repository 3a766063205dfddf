"""The human form of the ``buffer`` commands' results: rich tables and short summaries.

Every command also has ``--json``; the mappings rendered here are exactly those JSON
documents (see docs/gateway.md), so people and scripts see the same facts.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.inspect.check import CheckReport
from gateway.inspect.recover import RecoverReport


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def render_list(listing: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{listing['count']} rows, {listing['order']} first", title_justify="left")
    for name, justify in (
        ("id", "right"), ("state", "left"), ("device", "left"), ("seq", "right"),
        ("size", "right"), ("received", "left"), ("age", "right"), ("tries", "right"),
        ("delivered", "left"), ("reason", "left"),
    ):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in listing["rows"]:
        table.add_row(
            str(row["id"]),
            row["state"],
            _cell(row["device"]),
            _cell(row["seq"]),
            str(row["size"]),
            _cell(row["received_at"]),
            f"{row['age_s']:.1f}s",
            str(row["attempts"]),
            _cell(row["delivered_at"]),
            _cell(row["reason"]),
        )
    console.print(table)
    if listing["next_cursor"] is not None:
        console.print(f"more: --cursor {listing['next_cursor']}")


def render_show(data: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]batch {data['id']}[/] ({data['state']}) on {data['topic']}")
    facts = Table(show_header=False, box=None)
    facts.add_column(style="bold")
    facts.add_column()
    for name in ("election", "device", "seq", "body_hash", "size", "attempts", "reason", "detail"):
        facts.add_row(name, _cell(data[name]))
    for name, moment in data["times"].items():
        facts.add_row(name, _cell(moment))
    console.print(facts)
    signature = data["signature"]
    verdict = signature["status"]
    if signature["reason"]:
        verdict += f" ({signature['reason']}: {signature['detail']})"
    elif signature["detail"]:
        verdict += f" ({signature['detail']})"
    console.print(f"[bold]signature[/] {verdict}")
    if data["hash_matches"] is False:
        console.print("[bold red]the payload no longer matches the body hash stored at arrival[/]")
    body = data["body"]
    if data["body_error"]:
        console.print(f"[bold]body[/] does not parse: {data['body_error']}")
    if isinstance(body, dict):
        fields = Table(show_header=False, box=None, title="body", title_justify="left")
        fields.add_column(style="bold")
        fields.add_column()
        for name, value in body.items():
            if name != "counts":
                fields.add_row(name, _cell(value))
        console.print(fields)
        counts = body.get("counts")
        if isinstance(counts, dict):
            table = Table(title="counts", title_justify="left")
            table.add_column("contest")
            table.add_column("choice")
            table.add_column("votes", justify="right")
            for contest, choices in counts.items():
                for choice, votes in (choices or {}).items():
                    table.add_row(str(contest), str(choice), str(votes))
            console.print(table)
    history = Table(title="history", title_justify="left")
    history.add_column("at")
    history.add_column("event")
    history.add_column("reason")
    history.add_column("detail")
    for step in data["history"]:
        history.add_row(_cell(step["at"]), step["event"], _cell(step["reason"]), _cell(step["detail"]))
    console.print(history)


def render_quarantine(data: dict[str, Any], console: Console) -> None:
    counts = Table(title=f"quarantined: {data['total']}", title_justify="left")
    counts.add_column("reason")
    counts.add_column("batches", justify="right")
    for reason, count in data["by_reason"].items():
        counts.add_row(reason, str(count))
    console.print(counts)
    if not data["rows"]:
        return
    rows = Table(title=f"newest {len(data['rows'])}", title_justify="left")
    for name in ("id", "device", "seq", "reason", "detail", "quarantined"):
        rows.add_column(name, justify="right" if name in ("id", "seq") else "left")
    for row in data["rows"]:
        rows.add_row(
            str(row["id"]),
            _cell(row["device"]),
            _cell(row["seq"]),
            _cell(row["reason"]),
            _cell(row["detail"]),
            _cell(row["quarantined_at"]),
        )
    console.print(rows)


def render_retry(data: dict[str, Any], console: Console) -> None:
    console.print(
        f"retried with keys {data['keys']}: {len(data['passed'])} back to pending,"
        f" {len(data['still_quarantined'])} still quarantined, {len(data['skipped'])} skipped"
    )
    if data["passed"]:
        console.print("pending again: " + ", ".join(str(i) for i in data["passed"]))
    if data["still_quarantined"]:
        table = Table(title="still quarantined", title_justify="left")
        for name in ("id", "reason", "detail", "before"):
            table.add_column(name)
        for row in data["still_quarantined"]:
            table.add_row(str(row["id"]), _cell(row["reason"]), _cell(row["detail"]), _cell(row["previous_reason"]))
        console.print(table)
    for row in data["skipped"]:
        console.print(f"skipped {row['id']}: {row['why']}")


def render_purge(data: dict[str, Any], console: Console) -> None:
    age = "" if data["older_than_s"] is None else f" older than {data['older_than_s']:g} s"
    verb = "would purge" if data["dry_run"] else "purged"
    for state, count in data["purged"].items():
        console.print(f"{verb} {count} {state} batches{age}")


def render_check(report: CheckReport, console: Console) -> None:
    data = report.to_mapping()
    verdict = "[bold green]ok[/]" if report.ok else "[bold red]PROBLEMS[/]"
    console.print(f"[bold]buffer check[/] {report.path}: {verdict}")
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    app_id = report.application_id
    table.add_row("application id", "-" if app_id is None else f"{app_id:#x}")
    table.add_row("schema", f"{data['schema']['revision']} (this version: {data['schema']['head']})")
    table.add_row("integrity_check", "; ".join(report.integrity[:3]) or "-")
    table.add_row("usage counters", "match" if report.usage_recorded == report.usage_actual and report.usage_actual else "see problems")
    rows = data["rows"]
    table.add_row("rows read", str(rows["read"]))
    signatures = "payloads parsed, hashes and signatures verified" if report.signatures_checked else "payloads parsed and hashes compared (pass --keys to verify signatures)"
    table.add_row("payloads checked", f"{rows['payloads_checked']} ({signatures})")
    table.add_row("payload problems", str(rows["payload_problems"]))
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]- {problem}[/]")
    for example in report.examples:
        console.print(f"  id {example['id']} ({example['state']}): {example['reason']}: {example['detail']}")


def render_recover(report: RecoverReport, console: Console) -> None:
    lost = "unknown (the usage counters are unreadable)" if report.lost is None else str(report.lost)
    console.print(f"[bold]recovered[/] {report.source} -> {report.out}")
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("read", str(report.read))
    table.add_row("salvaged", str(report.salvaged))
    table.add_row("lost", lost)
    table.add_row("read from raw pages", str(report.from_pages))
    table.add_row("damaged, quarantined", str(report.requarantined))
    for state, count in report.by_state.items():
        table.add_row(f"  {state}", str(count))
    console.print(table)
    if report.unreadable:
        console.print("unreadable ids: " + ", ".join(f"{a}-{b}" for a, b in report.to_mapping()["unreadable_ids"][:10]))
    console.print(f"next: start the gateway with --buffer {report.out}")
