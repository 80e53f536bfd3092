"""Every model that was ever in production, and the operator's controls over production:
``mammo models list|show|rollback|freeze|unfreeze|retention``.

A **version** is a distinct checkpoint (sha256) that was once switched into production, numbered
``v1, v2, ...`` in the order of its first promotion. The versions are read from the audit trail
(``models/<name>/promotions/``, ``mammo.production.read_records``): every record with
``promoted: true`` switched production to its ``sha256``, a promotion (``kind`` absent or
``promotion``) or a rollback (``kind: rollback``). The current version is the one the production
manifest names.

- ``rollback``: switches production back to an earlier version (default: the version numbered
  before the current one) under the model's promotion lock, exactly as a promotion does
  (``mammo.production``: verified copy, export, compare-and-swap, garbage collection) and records
  the decision as a record of kind ``rollback``. The bytes come from the copy kept below
  ``production/`` or else from the run's checkpoint the version was promoted from; either way
  they must hash to the version's sha256.
- ``freeze`` / ``unfreeze``: while ``models/<name>/freeze.json`` exists, every promoter decision
  is "not promoted: frozen (reason)" (the promoter reads it under the lock), and rollbacks are
  refused. Both are recorded (``kind: freeze`` / ``unfreeze``).
- ``retention``: how many versions stay below ``production/`` (``models/<name>/retention.json``;
  default ``KEEP_PROMOTED``; ``all`` keeps every one). ``list`` says for each version whether it
  can still be restored, and from where.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mammo.config import DEFAULT_MODEL_NAME
from mammo.errors import ArtifactNotFoundError, ConfigError, IntegrityError, MammoError
from mammo.model_card import card_beside, summary
from mammo.production import (
    KEEP_PROMOTED,
    card_data_uri,
    card_keys,
    collect_garbage,
    current_manifest,
    expected_sha256,
    export_beside,
    fence_of,
    frozen_reason,
    lock_uri,
    model_key,
    previous_summary,
    read_card_data,
    read_freeze,
    read_records,
    read_retention,
    record_decision,
    stage,
    swap,
    write_freeze,
    write_retention,
)
from mammo.storage import Manifest, exists, join, open_store, production_model_uri, stat
from mammo.storage.layout import check_name
from mammo.storage.lock import hold

log = logging.getLogger(__name__)

#: The figures ``list`` and ``show`` print: split, level, metric.
HEADLINE = (("test", "breast", "auc"), ("test", "breast", "sensitivity"), ("test", "breast", "specificity"))


@dataclass
class Version:
    """One distinct model that was in production."""

    number: int
    sha256: str
    record: dict[str, Any]  # the record of its first promotion
    events: list[dict[str, Any]] = field(default_factory=list)  # every record that switched production to it

    @property
    def label(self) -> str:
        return f"v{self.number}"

    @property
    def short(self) -> str:
        return self.sha256[:12]


def _sha_of(record: dict[str, Any]) -> str | None:
    sha = record.get("sha256") or record.get("candidate_sha256")
    return str(sha) if sha else None


def build_versions(records: list[dict[str, Any]], manifest: Manifest | None = None) -> list[Version]:
    """The versions of an audit trail (oldest first); a production model without a promotion
    record (records removed by hand) is added last, described by its manifest."""
    versions: dict[str, Version] = {}
    for record in records:
        sha = _sha_of(record)
        if not record.get("promoted") or sha is None:
            continue
        if sha not in versions:
            versions[sha] = Version(len(versions) + 1, sha, record)
        versions[sha].events.append(record)
    current = None if manifest is None else manifest.metadata.get("sha256")
    if isinstance(current, str) and current not in versions:
        meta = manifest.metadata
        record = {"promoted": True, "sha256": current, "candidate_uri": meta.get("source_uri"),
                  "metric": meta.get("metric"), "candidate": meta.get("value"), "metrics": meta.get("metrics"),
                  "reason": meta.get("reason"), "decided_at": meta.get("promoted_at"),
                  "provenance": {k: meta.get(k) for k in ("run_id", "threshold", "report_uri") if k in meta},
                  "note": "no promotion record: described by the production manifest"}
        versions[current] = Version(len(versions) + 1, current, record, [record])
    return list(versions.values())


def version_label(records: list[dict[str, Any]], sha256: str | None) -> str | None:
    """The label (``v3``) ``sha256`` has, or would get as the next new version; None for None."""
    if sha256 is None:
        return None
    versions = build_versions(records)
    for version in versions:
        if version.sha256 == sha256:
            return version.label
    return f"v{len(versions) + 1}"


@dataclass
class Registry:
    """What the store holds about one model name."""

    store_uri: str
    model_name: str
    records: list[dict[str, Any]]
    manifest: Manifest | None
    versions: list[Version]

    @property
    def prefix(self) -> str:
        return production_model_uri(self.store_uri, self.model_name)

    @property
    def current(self) -> Version | None:
        sha = None if self.manifest is None else self.manifest.metadata.get("sha256")
        return next((v for v in self.versions if v.sha256 == sha), None)

    def previous(self) -> Version | None:
        """The version numbered before the current one (what a plain rollback restores)."""
        current = self.current
        if current is None:
            return None
        older = [v for v in self.versions if v.number < current.number]
        return older[-1] if older else None

    def resolve(self, spec: str | None) -> Version:
        """``spec``: None or ``current``, ``previous``, ``v3`` or ``3``, or a sha256 prefix (4+ hex
        digits); ConfigError naming the model and what exists otherwise."""
        known = ", ".join(f"{v.label} ({v.short})" for v in self.versions) or "none"
        text = (spec or "current").strip()
        found: Version | None = None
        if text in ("current", "production"):
            found = self.current
            if found is None:
                raise ConfigError(f"model {self.model_name!r} in {self.store_uri}: nothing is in production")
        elif text == "previous":
            found = self.previous()
            if found is None:
                raise ConfigError(f"model {self.model_name!r}: no version before the current one "
                                  f"({self.current.label if self.current else 'none'}); versions: {known}")
        elif re.fullmatch(r"[vV]?\d+", text):
            number = int(text.lstrip("vV"))
            found = next((v for v in self.versions if v.number == number), None)
        elif re.fullmatch(r"[0-9a-fA-F]{4,64}", text):
            matches = [v for v in self.versions if v.sha256.startswith(text.lower())]
            if len(matches) > 1:
                raise ConfigError(f"version {spec!r} of model {self.model_name!r}: ambiguous "
                                  f"({', '.join(v.label for v in matches)}); give more digits")
            found = matches[0] if matches else None
        else:
            raise ConfigError(f"version {spec!r}: give current, previous, v<N> or a sha256 prefix (4+ hex digits)")
        if found is None:
            raise ConfigError(f"version {spec!r} of model {self.model_name!r}: no such version; versions: {known}")
        return found

    def restorable(self, version: Version) -> str:
        """Where a rollback would take the version's bytes from: ``in production``, ``kept``
        (below production/), ``run checkpoint`` (the checkpoint it was promoted from), or
        ``no: ...`` when it can no longer be restored. By presence and recorded sha256; a
        rollback hashes the bytes themselves."""
        if self.current is version:
            return "in production"
        if exists(join(self.prefix, model_key(version.sha256))):
            return "kept"
        source = version.record.get("candidate_uri")
        if isinstance(source, str) and source:
            try:
                recorded = stat(source).sha256
            except ArtifactNotFoundError:
                recorded = "gone"
            if recorded in (None, version.sha256):
                return "run checkpoint"
        return "no: collected from production/ and its run's checkpoint is gone"


def load(store_uri: str, model_name: str) -> Registry:
    """The model's records, production manifest and versions; ConfigError when the store holds
    nothing of this model name."""
    check_name("model name", model_name)
    records = read_records(store_uri, model_name)
    manifest = current_manifest(production_model_uri(store_uri, model_name))
    if not records and manifest is None:
        raise ConfigError(f"model {model_name!r} in {store_uri}: unknown (no promotion records and no production "
                          f"model below {join(store_uri, 'models', model_name)})")
    return Registry(store_uri, model_name, records, manifest, build_versions(records, manifest))


# Figures --------------------------------------------------------------------------------------------


def _figure(metrics: Any, split: str, level: str, name: str) -> dict[str, Any] | None:
    try:
        row = metrics[split][level]
    except (KeyError, TypeError):
        return None
    if not isinstance(row, dict) or name not in row:
        return None
    ci = (row.get("ci") or {}).get(name) or {}
    return {"value": row.get(name), "low": ci.get("low"), "high": ci.get("high")}


def figures(version: Version) -> dict[str, dict[str, Any]]:
    """The version's headline figures with their intervals (``<split>.<level>.<metric>``), from
    the metrics recorded when it was promoted; {} for records that kept none."""
    metrics = version.record.get("metrics")
    out = {}
    for split in ("val", "test"):
        for level in ("breast", "image"):
            row = (metrics or {}).get(split, {}).get(level) if isinstance(metrics, dict) else None
            if not isinstance(row, dict):
                continue
            for name in row:
                if name == "ci" or not isinstance(row.get(name), (int, float)) or isinstance(row.get(name), bool):
                    continue
                figure = _figure(metrics, split, level, name)
                if figure is not None:
                    out[f"{split}.{level}.{name}"] = figure
    return out


def _fmt_figure(figure: dict[str, Any] | None) -> str:
    if figure is None or figure.get("value") is None:
        return "n/a"
    text = f"{figure['value']:.3f}"
    if figure.get("low") is not None and figure.get("high") is not None:
        text += f" [{figure['low']:.3f}, {figure['high']:.3f}]"
    return text


def _run_of(record: dict[str, Any]) -> str | None:
    provenance = record.get("provenance") or {}
    return provenance.get("run_id") or provenance.get("evaluation_uri")


def _rule_of(record: dict[str, Any]) -> str:
    rule = record.get("rule") or "margin"
    return f"{rule} on {record.get('metric')} (margin {record.get('margin')})"


def describe(registry: Registry, version: Version) -> dict[str, Any]:
    """One version as ``list --json`` and ``show --json`` give it."""
    record = version.record
    last = version.events[-1] if version.events else record
    return {
        "version": version.label, "sha256": version.sha256, "short": version.short,
        "current": registry.current is version,
        "promoted_at": record.get("decided_at"), "run": _run_of(record),
        "source_uri": record.get("candidate_uri"), "rule": _rule_of(record),
        "metric": record.get("metric"), "value": record.get("candidate"),
        "verdict": record.get("reason"), "figures": figures(version),
        "restorable": registry.restorable(version),
        "switched_in": [{"kind": e.get("kind") or "promotion", "at": e.get("decided_at"), "reason": e.get("reason")}
                        for e in version.events],
        "last_switched_in": last.get("decided_at"),
        **({"note": record["note"]} if record.get("note") else {}),
    }


def list_versions(store_uri: str, model_name: str) -> dict[str, Any]:
    registry = load(store_uri, model_name)
    freeze = read_freeze(store_uri, model_name)
    return {
        "model_name": model_name, "store": store_uri,
        "current": registry.current.label if registry.current else None,
        "frozen": freeze, "retention": read_retention(store_uri, model_name),
        "versions": [describe(registry, v) for v in registry.versions],
    }


def show_version(store_uri: str, model_name: str, spec: str | None = None) -> dict[str, Any]:
    """One version: its description, promotion record and model card (summary, where its pages are)."""
    registry = load(store_uri, model_name)
    version = registry.resolve(spec)
    card = read_card_data(store_uri, model_name, version.sha256)
    shown: dict[str, Any] = {**describe(registry, version), "model_name": model_name, "record": version.record}
    if card is not None:
        md, page = (join(registry.prefix, key) for key in card_keys(version.sha256))
        shown["card"] = {"markdown_uri": md if exists(md) else None, "html_uri": page if exists(page) else None,
                         "facts_uri": card_data_uri(store_uri, model_name, version.sha256), "summary": summary(card)}
    return shown


# Rollback, freeze, retention ---------------------------------------------------------------------------


def _operator() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (a container's arbitrary uid)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _source(registry: Registry, version: Version) -> str:
    """Where the version's bytes are read from: the copy kept below production/ when it hashes
    to the version's sha256, else the checkpoint it was promoted from (``stage`` verifies the
    copy); IntegrityError naming the version when neither is there."""
    kept = join(registry.prefix, model_key(version.sha256))
    if exists(kept) and open_store(kept).digest(kept).sha256 == version.sha256:
        return kept
    source = version.record.get("candidate_uri")
    if isinstance(source, str) and source and exists(source):
        expected_sha256(source, version.sha256)
        return source
    raise IntegrityError(
        f"version {version.label} ({version.short}) of model {registry.model_name!r} can no longer be restored: "
        f"{'its copy below production/ is damaged' if exists(kept) else 'it was collected from production/'} "
        f"and its run's checkpoint {source or '(none recorded)'} is gone; production untouched"
    )


def rollback(store_uri: str, model_name: str, to: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Switch production back to version ``to`` (default: ``previous``) under the lock, with the
    promoter's verified copy and compare-and-swap; the decision is recorded (``kind: rollback``)
    and returned."""
    registry = load(store_uri, model_name)
    if registry.manifest is None or registry.current is None:
        raise ConfigError(f"model {model_name!r} in {store_uri}: nothing is in production to roll back from")
    target = registry.resolve(to or "previous")
    current = registry.current
    if target is current:
        raise ConfigError(f"version {target.label} ({target.short}) of model {model_name!r} is already in production")
    prefix = registry.prefix
    intent = {"rollback_to": target.sha256, "staged": model_key(target.sha256)}
    with hold(lock_uri(store_uri, model_name), floor=fence_of(registry.manifest), intent=intent) as lease:
        freeze = read_freeze(store_uri, model_name)
        if freeze is not None:
            raise ConfigError(f"model {model_name!r} is {frozen_reason(freeze).split(';')[0]}: production is held "
                              "still; `mammo models unfreeze` first")
        expected = current_manifest(prefix)
        if expected is None or expected.metadata.get("sha256") != current.sha256:
            raise ConfigError(f"model {model_name!r}: production changed while the rollback waited for the lock; "
                              "look again with `mammo models list`")
        now = _now()
        record = target.record
        provenance = dict(record.get("provenance") or {})
        why = (f"rollback from {current.label} ({current.short}) to {target.label} ({target.short})"
               + (f": {reason}" if reason else ""))
        result: dict[str, Any] = {
            "kind": "rollback", "promoted": False, "promote": True, "production_uri": prefix,
            "candidate_uri": record.get("candidate_uri"), "candidate_sha256": target.sha256,
            "metric": record.get("metric"), "margin": record.get("margin"), "rule": record.get("rule"),
            "candidate": record.get("candidate"), "production": (current.record.get("candidate")),
            "production_sha256": current.sha256, "metrics": record.get("metrics"),
            "version": target.label, "previous_version": current.label, "previous_sha256": current.sha256,
            "reason": why, "operator_reason": reason, "decided_by": _operator(),
            "decided_at": now.isoformat(timespec="seconds"), "provenance": provenance,
        }
        try:
            source = _source(registry, target)
            result["restored_from"] = source
            entry = stage(source, target.sha256, prefix)
            extra = export_beside(prefix, target.sha256, provenance.get("threshold"), result)
            cards = card_beside(prefix, target.sha256, read_card_data(store_uri, model_name, target.sha256), result)
            metadata = {
                "model_name": model_name, "source_uri": record.get("candidate_uri") or source,
                "metric": record.get("metric"), "value": record.get("candidate"),
                "metrics": record.get("metrics") or {}, "promoted_at": result["decided_at"], "reason": why,
                "previous": previous_summary(expected), **provenance, "kind": "rollback", "version": target.label,
                **({"export": next(iter(extra))} if extra else {}),
            }
            swap(prefix, lease, expected, entry, metadata, read_retention(store_uri, model_name), {**extra, **cards})
            result.update(promoted=True, sha256=target.sha256, model_uri=join(prefix, model_key(target.sha256)),
                          fence=lease.token)
            collect_garbage(prefix, lock_uri(store_uri, model_name))
        except MammoError as err:
            record_decision(store_uri, model_name, {**result, "promoted": False, "promote": False,
                                                    "reason": f"refused: {why}: {err}"}, when=now)
            raise
        record_decision(store_uri, model_name, result, when=now)
    log.info("%s", why)
    return result


def _setting_record(kind: str, reason: str) -> dict[str, Any]:
    return {"kind": kind, "promoted": False, "promote": False, "candidate_uri": None, "metric": None,
            "candidate": None, "production": None, "reason": reason, "decided_by": _operator(),
            "decided_at": _now().isoformat(timespec="seconds")}


def freeze(store_uri: str, model_name: str, reason: str | None = None) -> dict[str, Any]:
    """Hold production still: every promotion until ``unfreeze`` is "not promoted: frozen".
    Taken under the lock, so a promotion in flight finishes first and none starts after."""
    registry = load(store_uri, model_name)
    with hold(lock_uri(store_uri, model_name), floor=fence_of(registry.manifest)):
        state = {"reason": reason or "no reason given", "frozen_at": _now().isoformat(timespec="seconds"),
                 "frozen_by": _operator(),
                 "production_sha256": None if registry.manifest is None else registry.manifest.metadata.get("sha256")}
        write_freeze(store_uri, model_name, state)
        record_decision(store_uri, model_name, {**_setting_record("freeze", f"frozen: {state['reason']}"),
                                                "freeze": state})
    return {"model_name": model_name, "frozen": True, **state}


def unfreeze(store_uri: str, model_name: str) -> dict[str, Any]:
    registry = load(store_uri, model_name)
    with hold(lock_uri(store_uri, model_name), floor=fence_of(registry.manifest)):
        was = read_freeze(store_uri, model_name)
        if was is None:
            raise ConfigError(f"model {model_name!r} is not frozen")
        write_freeze(store_uri, model_name, None)
        record_decision(store_uri, model_name, {**_setting_record("unfreeze", f"unfrozen (was: {was.get('reason')})"),
                                                "freeze": was})
    return {"model_name": model_name, "frozen": False, "was": was}


def parse_keep(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--keep {text!r}: a whole number of models, 2 or more, or all") from None


def set_retention(store_uri: str, model_name: str, keep: int | None) -> dict[str, Any]:
    """Keep ``keep`` versions below production/ (None: all) from the next switch on; recorded."""
    registry = load(store_uri, model_name)
    with hold(lock_uri(store_uri, model_name), floor=fence_of(registry.manifest)):
        write_retention(store_uri, model_name, keep)
        shown = "all" if keep is None else str(keep)
        record_decision(store_uri, model_name, {**_setting_record("retention", f"retention: keep {shown} version(s)"),
                                                "keep": keep})
    return {"model_name": model_name, "keep": keep}


# The command line -----------------------------------------------------------------------------------


def _print_list(listing: dict[str, Any]) -> None:
    frozen = listing["frozen"]
    keep = listing["retention"]
    print(f"model {listing['model_name']} in {listing['store']}: current {listing['current'] or 'none'}; "
          f"retention {'all' if keep is None else keep}"
          + (f"; FROZEN ({frozen.get('reason')}, since {frozen.get('frozen_at')})" if frozen else ""))
    head = ["", "version", "sha256", "promoted at", "run", "rule", "figure [95% CI]", *(".".join(h) for h in HEADLINE),
            "restorable"]
    rows = []
    for v in listing["versions"]:
        shown = [v["figures"].get(".".join(h)) for h in HEADLINE]
        rows.append(["*" if v["current"] else "", v["version"], v["short"], str(v["promoted_at"]), str(v["run"]),
                     v["rule"], f"{v['metric']} {_fmt_figure(v['figures'].get(str(v['metric'])) or {'value': v['value']})}",
                     *(_fmt_figure(f) for f in shown), v["restorable"]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    for v in listing["versions"]:
        print(f"{v['version']}: {v['verdict']}")


def _print_show(shown: dict[str, Any]) -> None:
    print(f"{shown['version']} of model {shown['model_name']}{' (current)' if shown['current'] else ''}")
    for key in ("sha256", "promoted_at", "run", "source_uri", "rule", "verdict", "restorable"):
        print(f"  {key.replace('_', ' ')}: {shown[key]}")
    for event in shown["switched_in"]:
        print(f"  switched in: {event['kind']} at {event['at']}")
    if shown.get("note"):
        print(f"  note: {shown['note']}")
    if shown["figures"]:
        print("  figures [95% CI]:")
        for name, figure in shown["figures"].items():
            print(f"    {name}: {_fmt_figure(figure)}")
    else:
        print("  figures: none recorded")
    card = shown.get("card")
    if card:
        where = card.get("markdown_uri") or "pages collected with the model (a rollback writes them again)"
        print(f"  model card: {where}" + (f" (HTML: {card['html_uri']})" if card.get("html_uri") else ""))
        for line in card.get("summary") or []:
            print(f"    {line}")


def build_parser() -> argparse.ArgumentParser:
    store_default = os.environ.get("MAMMO_STORE_URI")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=store_default, metavar="URI",
                        help="Storage root, e.g. s3://mammo or a local folder (default: $MAMMO_STORE_URI, "
                        f"now {store_default or 'unset'}).")
    common.add_argument("--model-name", default=DEFAULT_MODEL_NAME, metavar="NAME",
                        help="models/<name>/ (default: %(default)s).")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="Print JSON instead of text (default: text).")

    p = argparse.ArgumentParser(prog="mammo models", description="The versions of a production model and the "
                                "operator's controls: list, show, rollback, freeze, unfreeze, retention.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", parents=[common, json_flag], help="Every version ever promoted; * marks the current one.",
                   description="Every version ever in production (v1 = the first promoted): short sha256, when, "
                   "which run, the rule and its verdict, headline figures with 95% intervals, and whether a "
                   "rollback can still restore it.")
    show = sub.add_parser("show", parents=[common, json_flag], help="One version's record and figures.")
    show.add_argument("version", nargs="?", default="current",
                      help="current, previous, v<N> or a sha256 prefix (default: %(default)s).")
    back = sub.add_parser("rollback", parents=[common, json_flag],
                          help="Switch production back to an earlier version (verified, under the lock, recorded).")
    back.add_argument("--to", default="previous", metavar="VERSION",
                      help="v<N>, a sha256 prefix or previous: the version numbered before the current one "
                      "(default: %(default)s).")
    back.add_argument("--reason", default=None, metavar="TEXT", help="Why, for the record (default: none).")
    frz = sub.add_parser("freeze", parents=[common, json_flag],
                         help="Hold production still: every promotion is 'not promoted: frozen' until unfreeze.")
    frz.add_argument("--reason", default=None, metavar="TEXT",
                     help="Why (recorded and shown in every refused promotion; default: 'no reason given').")
    sub.add_parser("unfreeze", parents=[common, json_flag], help="Let promotions through again.")
    ret = sub.add_parser("retention", parents=[common, json_flag],
                         help="Show or set how many versions stay below production/ for rollback.")
    ret.add_argument("--keep", default=None, metavar="N|all",
                     help=f"Keep N versions (2 or more) or all from the next switch on (default: show the "
                     f"setting; unset means {KEEP_PROMOTED}).")
    return p


def run_command(args: argparse.Namespace) -> None:
    if not args.store:
        raise ConfigError("--store: give the storage root (or set MAMMO_STORE_URI)")
    store, name = args.store, args.model_name
    if args.command == "list":
        listing = list_versions(store, name)
        print(json.dumps(listing, indent=2)) if args.json else _print_list(listing)
        return
    if args.command == "show":
        shown = show_version(store, name, args.version)
        print(json.dumps(shown, indent=2)) if args.json else _print_show(shown)
        return
    if args.command == "rollback":
        result = rollback(store, name, args.to, args.reason)
        text = f"{result['reason']}; production is {result['version']} ({result['sha256'][:12]})"
    elif args.command == "freeze":
        result = freeze(store, name, args.reason)
        text = f"model {name} frozen ({result['reason']}): promotions are recorded as not promoted until unfreeze"
    elif args.command == "unfreeze":
        result = unfreeze(store, name)
        text = f"model {name} unfrozen (was frozen: {result['was'].get('reason')})"
    else:
        if args.keep is None:
            load(store, name)
            keep = read_retention(store, name)
            result = {"model_name": name, "keep": keep}
        else:
            result = set_retention(store, name, parse_keep(args.keep))
        text = f"model {name}: retention keeps {'all' if result['keep'] is None else result['keep']} version(s)"
    print(json.dumps(result, indent=2) if args.json else text)


def main(argv: list[str] | None = None) -> int:
    from mammo.console import parse_command_line, run_guarded, setup_logging

    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging()
    return run_guarded(lambda: run_command(args))
