"""Scenario files: a topology and a timeline of faults, read once into frozen objects.

A scenario is YAML::

    name: uplink-outage                      # default: the file's stem
    description: The gateway's cloud link is cut for 8 s; it buffers, then forwards.
    topology:
      devices: 30          # the first N devices of the election (0 = all)
      batches: 6           # per device
      rate: 15             # batches/s over the whole fleet (0 = as fast as the fleet can)
      seed: 7
      sites: 1             # gateways: each site its own edge broker, gateway and share of the devices
      cloud_workers: 1     # more than 1: they share the load (cloud run --share)
      database: sqlite     # or postgresql (a throw-away database on 127.0.0.1:5432)
      links: [uplink]      # links with a fault proxy: devices, edge, uplink, cloud
      behaviours: {tampered: 1, replay: 1}   # devices run --behaviour NAME=SHARE
      gateway_max_buffer_batches: 0          # the gateway's quota in batches (0 = none)
      gateway_max_buffer_bytes: 0            # and in payload bytes (0 = none)
      gateway_keepalive: 0                   # seconds (0 = the gateway's default, 15)
      election: ../elections/x.yaml          # relative to this file (default: the sample election)
      edge_persistence: true                 # the edge brokers' persistence
      confirm: true        # false: devices forget a batch at the broker's PUBACK, not at the receipt
      resend_after: 1s     # devices resend what stays unreceipted after this, doubling up to
      resend_cap: 4s       # this
      gateway_max_quarantine_rows_per_device: 0  # the gateway's per-device quarantine cap (0 = its default)
      serve: false         # true: `cloud serve` over the cloud database; the verdict checks its totals
      rogue_flood: 200     # rejects the rogue (``start: rogue``) floods its stolen device's topic with
      cloud_broker: nats   # the cloud broker: mosquitto (default) or a NATS JetStream cluster
      nodes: 3             # with nats: its nodes (the MQTT streams replicated this many ways)
      elections: 20        # that many synthetic elections at once, `devices` each (edgetally/scenarios/elections.py)
    timeline:
      - {at: 3s, cut: uplink}
      - {at: 11s, restore: uplink}
      - {at: 4s, crash: gateway, every: 3s, times: 4}

Each timeline entry names one action and its target: link actions ``cut``, ``blackhole``,
``restore``, ``latency`` (``ms``, ``jitter_ms``), ``bandwidth`` (``bps``), ``drop`` (``for``)
on a link (``devices``, ``edge``, ``uplink``, ``cloud``); process actions ``kill`` (SIGKILL),
``stop`` (graceful), ``start``, ``restart`` (stop, start), ``crash`` (SIGKILL, start again at
once) on ``edge-broker``, ``cloud-broker``, ``gateway``, ``cloud`` (every worker) or
``cloudN``, ``fleet``, and with ``cloud_broker: nats`` one node: ``cloud-nodeN``,
``cloud-node-leader`` (the node leading the MQTT message stream when the action runs) or
``cloud-node-follower`` (a running node that does not lead it); ``cloud-node`` alone is every
node (``start: cloud-node`` starts the stopped ones); ``wipe`` on ``gateway`` (a disk loss: SIGKILL, its buffer file deleted,
started again on an empty disk); ``start`` (or ``kill``) on ``rogue``: ``edgetally rogue`` with
the certificate of the election's last device (which must be outside the fleet) against site
1's edge broker (edgetally/rogue.py says what it tries). A target or link without a number means every site's; ``gateway2`` or
``uplink2`` one site's. ``every`` and ``times`` repeat an entry. Times are ``5s``, ``500ms``
or plain seconds. Errors name the file, the entry and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from devices.behaviours import Behaviour

LINKS = ("devices", "edge", "uplink", "cloud")
LINK_ACTIONS = ("cut", "blackhole", "restore", "latency", "bandwidth", "drop")
PROCESS_ACTIONS = ("kill", "stop", "start", "restart", "crash", "wipe")
PROCESSES = (
    "edge-broker", "cloud-broker", "gateway", "cloud", "fleet", "rogue",
    "cloud-node", "cloud-node-leader", "cloud-node-follower",
)  # fmt: skip
CLUSTER_TARGETS = ("cloud-node", "cloud-node-leader", "cloud-node-follower")
CLOUD_BROKERS = ("mosquitto", "nats")
_ONLY_ON = {"wipe": ("gateway",)}  # actions that apply to some processes only
_ONLY_WITH = {"rogue": ("start", "kill", "stop")}  # processes that take some actions only
_SITE_SCOPED = ("devices", "edge", "uplink", "edge-broker", "gateway", "fleet")
_OPTIONS = {"ms", "jitter_ms", "bps", "for"}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


class ScenarioError(Exception):
    """A scenario file that cannot be run; the message names the file, the entry and why."""


@dataclass(frozen=True, slots=True)
class Topology:
    devices: int = 20
    batches: int = 4
    rate: float = 20.0
    seed: int = 1
    sites: int = 1
    cloud_workers: int = 1
    database: str = "sqlite"
    links: tuple[str, ...] = ()
    behaviours: tuple[tuple[str, str], ...] = ()
    gateway_max_buffer_batches: int = 0
    gateway_max_buffer_bytes: int = 0
    gateway_keepalive: int = 0  # seconds; 0 = the gateway's default
    edge_persistence: bool = True
    confirm: bool = True  # false: devices drop each batch at the edge broker's PUBACK (hop by hop only)
    resend_after: float = 1.0
    resend_cap: float = 4.0
    gateway_max_quarantine_rows_per_device: int = 0  # 0 = the gateway's default
    rogue_flood: int = 200
    serve: bool = False
    election: Path | None = None
    cloud_broker: str = "mosquitto"
    nodes: int = 1
    elections: int = 1  # more: synthetic elections, each its own fleet per site (scenarios/elections.py)


@dataclass(frozen=True, slots=True)
class Action:
    """One step of the timeline, at ``at`` seconds from the start (repeats already expanded)."""

    at: float
    verb: str
    target: str  # a process or link name without site number
    site: int | None = None  # 1-based; None: every site (or not site-scoped)
    worker: int | None = None  # cloudN
    ms: float = 0.0
    jitter_ms: float = 0.0
    bps: int = 0
    duration: float = 0.0  # drop's ``for``
    node: int | None = None  # cloud-nodeN

    @property
    def is_link(self) -> bool:
        return self.verb in LINK_ACTIONS

    def describe(self) -> str:
        number = self.site or self.worker or self.node
        where = self.target + (str(number) if number else "")
        extra = ""
        if self.verb == "latency":
            extra = f" {self.ms:g}±{self.jitter_ms:g} ms"
        elif self.verb == "bandwidth":
            extra = f" {self.bps:,} B/s"
        elif self.verb == "drop":
            extra = f" for {self.duration:g}s"
        return f"{self.verb} {where}{extra}"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    topology: Topology
    timeline: tuple[Action, ...]
    drain_timeout: float = 90.0
    path: Path | None = None
    tags: tuple[str, ...] = field(default=())

    @property
    def last_fault_at(self) -> float | None:
        return max((a.at + a.duration for a in self.timeline), default=None)

    def scaled(self, speed: float) -> Scenario:
        """The same scenario with every time divided by ``speed`` (``--speed 2``: twice as fast)."""
        if speed <= 0:
            raise ScenarioError(f"--speed must be above 0, got {speed}")
        timeline = tuple(replace(a, at=a.at / speed, duration=a.duration / speed) for a in self.timeline)
        return replace(self, timeline=timeline)

    def with_topology(self, **changes: Any) -> Scenario:
        return replace(self, topology=replace(self.topology, **changes))


def parse_seconds(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ScenarioError(f"{what}: expected a time such as 5s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _TIME.match(value)):
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number / 1000 if unit == "ms" else number * 60 if unit == "m" else number
    else:
        raise ScenarioError(f"{what}: expected a time such as 5s or 500ms, got {value!r}")
    if seconds < 0:
        raise ScenarioError(f"{what}: a time cannot be negative ({value!r})")
    return seconds


def _split_target(name: object, allowed: tuple[str, ...], what: str) -> tuple[str, int | None, int | None]:
    if not isinstance(name, str):
        raise ScenarioError(f"{what}: expected one of {', '.join(allowed)}, got {name!r}")
    match = re.fullmatch(r"([a-z-]+?)(\d+)?", name)
    base, number = (match.group(1), match.group(2)) if match else (name, None)
    if base not in allowed:
        raise ScenarioError(f"{what}: unknown target {name!r} (expected one of {', '.join(allowed)})")
    if number is None:
        return base, None, None
    if base in ("cloud", "cloud-node"):
        return base, None, int(number)
    if base not in _SITE_SCOPED:
        raise ScenarioError(f"{what}: {base} has no per-site instances, use {base!r}")
    return base, int(number), None


def _topology(raw: object, where: str) -> Topology:
    if raw is None:
        return Topology()
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: topology must be a mapping")
    known = set(Topology.__slots__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScenarioError(f"{where}: topology: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        what = f"{where}: topology.{key}"
        default = getattr(Topology(), key)
        if key == "links":
            links = [value] if isinstance(value, str) else value
            if not isinstance(links, list) or any(link not in LINKS for link in links):
                raise ScenarioError(f"{what}: expected a list of {', '.join(LINKS)}, got {value!r}")
            values[key] = tuple(dict.fromkeys(links))
        elif key == "behaviours":
            if not isinstance(value, Mapping):
                raise ScenarioError(f"{what}: expected a mapping of behaviour: share, got {value!r}")
            known_behaviours = {b.value for b in Behaviour}
            for name in value:
                if name not in known_behaviours:
                    raise ScenarioError(f"{what}: unknown behaviour {name!r} (known: {', '.join(sorted(known_behaviours))})")
            values[key] = tuple((str(k), str(v)) for k, v in value.items())
        elif key == "cloud_broker":
            if value not in CLOUD_BROKERS:
                raise ScenarioError(f"{what}: expected {' or '.join(CLOUD_BROKERS)}, got {value!r}")
            values[key] = value
        elif key == "database":
            if value not in ("sqlite", "postgresql"):
                raise ScenarioError(f"{what}: expected sqlite or postgresql, got {value!r}")
            values[key] = value
        elif key == "election":
            values[key] = Path(str(value))
        elif key in ("resend_after", "resend_cap"):
            values[key] = parse_seconds(value, what)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ScenarioError(f"{what}: expected true or false, got {value!r}")
            values[key] = value
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ScenarioError(f"{what}: expected a whole number >= 0, got {value!r}")
            values[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ScenarioError(f"{what}: expected a number >= 0, got {value!r}")
            values[key] = float(value)
    topology = Topology(**values)
    if topology.sites < 1 or topology.cloud_workers < 1:
        raise ScenarioError(f"{where}: topology needs at least one site and one cloud worker")
    if topology.cloud_broker == "nats":
        if topology.nodes < 1:
            raise ScenarioError(f"{where}: topology.nodes must be at least 1")
        proxied = sorted({"uplink", "cloud"} & set(topology.links))
        if proxied:
            raise ScenarioError(f"{where}: links {proxied} have no fault proxy in front of a NATS cluster (clients use every node)")
    elif topology.nodes != 1:
        raise ScenarioError(f"{where}: topology.nodes is for cloud_broker: nats (mosquitto runs one node)")
    if topology.batches < 1:
        raise ScenarioError(f"{where}: topology.batches must be at least 1")
    if topology.elections < 1 or (topology.elections > 1 and topology.election is not None):
        raise ScenarioError(f"{where}: topology.elections is at least 1, and with more than 1 the elections are synthetic (no election file)")
    if topology.devices and topology.devices < topology.sites:
        raise ScenarioError(f"{where}: {topology.devices} devices cannot fill {topology.sites} sites")
    return topology


def _actions(entry: object, index: int, topology: Topology, where: str) -> list[Action]:
    what = f"{where}: timeline[{index}]"
    if not isinstance(entry, Mapping):
        raise ScenarioError(f"{what}: expected a mapping such as {{at: 5s, cut: uplink}}, got {entry!r}")
    if "at" not in entry:
        raise ScenarioError(f"{what}: missing 'at' (when, e.g. at: 5s)")
    verbs = [k for k in entry if k in LINK_ACTIONS or k in PROCESS_ACTIONS]
    if len(verbs) != 1:
        raise ScenarioError(
            f"{what}: expected exactly one action of {', '.join(LINK_ACTIONS + PROCESS_ACTIONS)}, got {verbs or 'none'}"
        )
    verb = verbs[0]
    unknown = sorted(set(map(str, entry)) - {"at", "every", "times", verb} - _OPTIONS)
    if unknown:
        raise ScenarioError(f"{what}: unknown key(s) {', '.join(unknown)}")
    at = parse_seconds(entry["at"], f"{what}.at")
    if verb in LINK_ACTIONS:
        target, site, worker = _split_target(entry[verb], LINKS, f"{what}.{verb}")
        if target not in topology.links:
            raise ScenarioError(
                f"{what}: link {target!r} has no fault proxy: add it to topology.links (now {list(topology.links)})"
            )
    else:
        target, site, worker = _split_target(entry[verb], PROCESSES, f"{what}.{verb}")
        if target not in _ONLY_ON.get(verb, (target,)):
            raise ScenarioError(f"{what}: {verb} applies to {', '.join(_ONLY_ON[verb])} only, not {target}")
        if verb not in _ONLY_WITH.get(target, (verb,)):
            raise ScenarioError(f"{what}: {target} takes {', '.join(_ONLY_WITH[target])} only, not {verb}")
    if site is not None and site > topology.sites:
        raise ScenarioError(f"{what}: site {site} does not exist (topology.sites is {topology.sites})")
    node = None
    if target in CLUSTER_TARGETS:
        if topology.cloud_broker != "nats":
            raise ScenarioError(f"{what}: {target} needs topology.cloud_broker: nats")
        node, worker = worker, None
        if node is not None and node > topology.nodes:
            raise ScenarioError(f"{what}: cloud-node{node} does not exist (topology.nodes is {topology.nodes})")
    if worker is not None and worker > topology.cloud_workers:
        raise ScenarioError(f"{what}: cloud{worker} does not exist (topology.cloud_workers is {topology.cloud_workers})")
    ms = jitter = 0.0
    bps = 0
    duration = 0.0
    if verb == "latency":
        ms = parse_seconds(entry.get("ms", 0), f"{what}.ms")
        jitter = parse_seconds(entry.get("jitter_ms", 0), f"{what}.jitter_ms")
    elif verb == "bandwidth":
        raw_bps = entry.get("bps")
        if isinstance(raw_bps, bool) or not isinstance(raw_bps, int) or raw_bps <= 0:
            raise ScenarioError(f"{what}: bandwidth needs bps, a whole number of bytes per second above 0")
        bps = raw_bps
    elif verb == "drop":
        if "for" not in entry:
            raise ScenarioError(f"{what}: drop needs 'for' (how long the link stays down, e.g. for: 3s)")
        duration = parse_seconds(entry["for"], f"{what}.for")
    for option in _OPTIONS & set(entry):
        if (option in ("ms", "jitter_ms") and verb != "latency") or (option == "bps" and verb != "bandwidth") or (
            option == "for" and verb != "drop"
        ):
            raise ScenarioError(f"{what}: {option!r} does not apply to {verb}")
    times = entry.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 1000:
        raise ScenarioError(f"{what}.times: expected a whole number from 1 to 1000, got {times!r}")
    every = parse_seconds(entry["every"], f"{what}.every") if "every" in entry else 0.0
    if times > 1 and every <= 0:
        raise ScenarioError(f"{what}: 'times' needs 'every' (the interval between repeats)")
    return [Action(at + n * every, verb, target, site, worker, ms, jitter, bps, duration, node) for n in range(times)]


def parse_scenario(data: object, *, source: str = "<scenario>", path: Path | None = None) -> Scenario:
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: a scenario is a mapping with topology and timeline")
    unknown = sorted(set(map(str, data)) - {"name", "description", "topology", "timeline", "drain_timeout", "tags"})
    if unknown:
        raise ScenarioError(f"{source}: unknown key(s) {', '.join(unknown)}")
    topology = _topology(data.get("topology"), source)
    if topology.election is not None and not topology.election.is_absolute() and path is not None:
        topology = replace(topology, election=path.parent / topology.election)  # relative to the file
    if topology.election is not None and path is not None and not topology.election.exists():
        raise ScenarioError(f"{source}: topology.election: no such file {topology.election}")
    timeline_raw = data.get("timeline") or []
    if not isinstance(timeline_raw, list):
        raise ScenarioError(f"{source}: timeline must be a list of entries")
    actions = [a for i, entry in enumerate(timeline_raw) for a in _actions(entry, i, topology, source)]
    actions.sort(key=lambda a: a.at)
    name = data.get("name") or (path.stem if path is not None else "scenario")
    tags = data.get("tags") or []
    if not isinstance(tags, list):
        raise ScenarioError(f"{source}: tags must be a list")
    drain = parse_seconds(data.get("drain_timeout", 90), f"{source}: drain_timeout")
    return Scenario(str(name), str(data.get("description") or ""), topology, tuple(actions), drain, path, tuple(map(str, tags)))


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    return parse_scenario(data, source=str(path), path=path)


def shipped_dir() -> Path:
    """The scenarios that ship with EdgeTally (``scenarios/`` at the project root)."""
    return Path(__file__).resolve().parents[2] / "scenarios"


def shipped() -> list[Scenario]:
    return [load_scenario(p) for p in sorted(shipped_dir().glob("*.yaml"))]
