"""`rlhfkit annotate`: collect human preference labels in the browser.

    rlhfkit annotate add-rater alice --db annotations.db          # prints alice's token once (and bob, carol)
    rlhfkit annotate add-rater dana --attr age=18-29 --attr region=EU   # optional attributes for audits (admin only)
    rlhfkit annotate raters                                         # raters and their attributes
    rlhfkit annotate create samples.jsonl --name round1 --raters-per-item 3 --dimensions helpful,harmless
    rlhfkit annotate serve --db annotations.db --port 8000         # raters open http://host:8000/ and log in
    rlhfkit annotate status                                         # labelled / total per campaign
    rlhfkit annotate quality --campaign round1                      # kappas, alpha, per-rater and per-group
    rlhfkit annotate export --campaign round1 -o prefs.jsonl --adjudication majority

``--db`` takes a SQLite file path or any SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db); its default is
$RLHFKIT_ANNOTATE_DB or annotations.db (a new SQLite file is created readable by its owner only). The admin token for
the web API (at least 32 characters) comes from $RLHFKIT_ADMIN_TOKEN or --admin-token-file, or is generated and
printed once at start; --admin-token works too but shows the token to every user of the machine in `ps`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rlhfkit.data.io import decode_text, read_rows, write_jsonl

ADMIN_ENV = "RLHFKIT_ADMIN_TOKEN"
DB_ENV = "RLHFKIT_ANNOTATE_DB"


def _read_text(path: str) -> str:
    """A text file (the rubric); bytes that are not UTF-8 are an error naming the file and line."""
    with open(path, "rb") as f:
        return decode_text(f.read(), path)


def _admin_token(args: argparse.Namespace) -> str:
    """--admin-token-file, --admin-token (visible in `ps`: warned), $RLHFKIT_ADMIN_TOKEN, else a new one printed once."""
    from rlhfkit.feedback.app import MIN_ADMIN_TOKEN
    from rlhfkit.feedback.store import new_token

    if args.admin_token and args.admin_token_file:
        raise ValueError("give --admin-token or --admin-token-file, not both")
    if args.admin_token_file:
        lines = _read_text(args.admin_token_file).strip().splitlines()
        token, source = (lines[0].strip() if lines else ""), args.admin_token_file
        if not token:
            raise ValueError(f"{args.admin_token_file}: empty admin token file")
        if os.stat(args.admin_token_file).st_mode & 0o077:
            print(f"warning: {args.admin_token_file} is readable by other users: chmod 600 it", file=sys.stderr)
    elif args.admin_token:
        token, source = args.admin_token.strip(), "--admin-token"
        print(
            f"warning: --admin-token is visible to every user of this machine (ps, /proc); set ${ADMIN_ENV} or use "
            "--admin-token-file",
            file=sys.stderr,
        )
    elif os.environ.get(ADMIN_ENV, "").strip():
        token, source = os.environ[ADMIN_ENV].strip(), f"${ADMIN_ENV}"
    else:
        token = new_token()
        print(f"admin token (shown once; set ${ADMIN_ENV} to choose your own): {token}", flush=True)
        return token
    if len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(
            f"the admin token from {source} has {len(token)} characters; use at least {MIN_ADMIN_TOKEN} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'), or leave it unset to have one generated"
        )
    return token


def _store(args: argparse.Namespace) -> Any:
    # sqlalchemy: loaded only when a command runs, so `rlhfkit --help` stays fast
    from rlhfkit.feedback.store import Store

    return Store(args.db)


def _serve(args: argparse.Namespace) -> int:
    # uvicorn/fastapi/sqlalchemy: loaded only when the command runs, so `rlhfkit --help` stays fast
    import uvicorn

    from rlhfkit.feedback.app import create_app

    token = _admin_token(args)
    store = _store(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host} over plain HTTP: tokens cross the network in clear text; "
            "put the app behind HTTPS",
            file=sys.stderr,
        )
    print(f"annotation app on http://{args.host}:{args.port}/  ({store!r})", flush=True)
    uvicorn.run(create_app(store, token), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _create(args: argparse.Namespace) -> int:
    # sqlalchemy: loaded only when the command runs, so `rlhfkit --help` stays fast
    from rlhfkit.feedback.store import rows_to_items

    if args.rubric is not None and args.rubric_file is not None:
        raise ValueError("give --rubric or --rubric-file, not both")
    rubric = args.rubric or ""
    if args.rubric_file is not None:
        rubric = _read_text(args.rubric_file).strip()
    items = rows_to_items(list(read_rows(args.file)), args.file)
    gold = rows_to_items(list(read_rows(args.gold)), args.gold, gold=True) if args.gold else []
    dims = [d.strip() for d in args.dimensions.split(",") if d.strip()] if args.dimensions else []
    raters = [r.strip() for r in args.raters.split(",") if r.strip()] if args.raters else None
    store = _store(args)
    store.create_campaign(
        args.name,
        items + gold,
        kind=args.kind,
        raters_per_item=args.raters_per_item,
        rubric=rubric,
        dimensions=dims,
        strength_scale=args.strength_scale,
        raters=raters,
        seed=args.seed,
        pairs=args.pairs,
    )
    p = store.progress(args.name)
    print(
        f"campaign {args.name!r} ({args.kind}): {p['total_items']} items ({len(gold)} gold), "
        f"{args.raters_per_item} rater(s) per item, {p['required_labels']} labels to collect"
    )
    return 0


def _attributes(pairs: list[str] | None) -> dict[str, str]:
    """--attr age=18-29 --attr region=EU -> {"age": "18-29", "region": "EU"}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--attr {pair!r}: expected NAME=VALUE, e.g. --attr age=18-29")
        if key.strip() in out:
            raise ValueError(f"--attr {pair!r}: attribute {key.strip()!r} given twice")
        out[key.strip()] = value.strip()
    return out


def _add_rater(args: argparse.Namespace) -> int:
    store = _store(args)
    attrs = _attributes(args.attr)
    if args.reset:
        token = store.reset_token(args.name)
        if attrs:
            store.set_rater_attributes(args.name, attrs)
    else:
        token = store.add_rater(args.name, attrs)
    print(f"token for rater {args.name!r} (shown once; only its hash is stored):", file=sys.stderr)
    print(token)
    return 0


def _set_attributes(args: argparse.Namespace) -> int:
    store = _store(args)
    store.set_rater_attributes(args.name, _attributes(args.attr))
    shown = ", ".join(f"{k}={v}" for k, v in store.rater_attributes()[args.name].items()) or "none"
    print(f"rater {args.name!r}: attributes {shown}")
    return 0


def _raters(args: argparse.Namespace) -> int:
    attributes = _store(args).rater_attributes()
    if not attributes:
        print("no raters yet (rlhfkit annotate add-rater NAME)")
        return 0
    for name, attrs in attributes.items():
        print(f"{name:<24} {' '.join(f'{k}={v}' for k, v in attrs.items())}".rstrip())
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = store.export(args.campaign, adjudication=args.adjudication, dimension=args.dimension, partial=args.partial)
    p = store.progress(args.campaign)
    if p["labelled_items"] < p["total_items"]:
        print(
            f"warning: campaign {args.campaign!r} is not fully labelled ({p['labelled_items']}/{p['total_items']} "
            f"items have all their labels, {p['labels']}/{p['required_labels']} labels): items short of their "
            "raters are adjudicated on the labels they have, unlabelled items are left out",
            file=sys.stderr,
        )
    n = write_jsonl(args.output, rows)
    print(f"wrote {n} rows to {args.output} (adjudication: {args.adjudication}; gold items left out)")
    return 0


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _quality(args: argparse.Namespace) -> int:
    report = _store(args).quality(args.campaign, adjudication=args.adjudication)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
        return 0
    print(f"campaign {report['campaign']!r} ({report['kind']}): {report['n_items']} items, {report['n_labels']} labels")
    print(f"  Fleiss' kappa        {_fmt(report['fleiss'])}")
    print(f"  Krippendorff's alpha {_fmt(report['krippendorff'])}")
    if report["cohen"]:
        print("  Cohen's kappa per rater pair:")
        for pair, k in sorted(report["cohen"].items()):
            print(f"    {pair:<30} {_fmt(k)}")
    print(f"  {'rater':<20} {'labels':>6} {'vs majority':>12} {'vs gold':>8}")
    for name, r in sorted(report["raters"].items()):
        print(f"  {name:<20} {r['n']:>6} {_fmt(r['majority_agreement']):>12} {_fmt(r['gold_agreement']):>8}")
    for dim, sub in report.get("dimensions", {}).items():
        print(f"  dimension {dim}: Fleiss {_fmt(sub['fleiss'])}, Krippendorff {_fmt(sub['krippendorff'])}")
    _print_groups(report.get("groups") or {})
    adj = report["adjudication"]
    print(
        f"  adjudication ({adj['method']}): {adj['n_disagreements']} of {adj['items']} labelled items flagged "
        "as disagreements"
        + (f": items {', '.join(str(d['item']) for d in adj['disagreements'][:20])}" if adj["disagreements"] else "")
    )
    return 0


def _print_groups(groups: dict[str, Any]) -> None:
    """The demographic audit: label distribution and agreement per attribute group, then agreement across groups."""
    for attr, entry in groups.items():
        print(f"  rater groups by {attr}:")
        print(
            f"    {'group':<16} {'raters':>6} {'labels':>6} {'0':>6} {'1':>6} {'tie':>6} {'within':>7} "
            f"{'Fleiss':>7} {'gold':>6}"
        )
        for g, x in entry["groups"].items():
            d = x["distribution"]
            print(
                f"    {g:<16} {x['raters']:>6} {x['labels']:>6} {_fmt(d['0']):>6} {_fmt(d['1']):>6} {_fmt(d['tie']):>6} "
                f"{_fmt(x['within_agreement']):>7} {_fmt(x['fleiss']):>7} {_fmt(x['gold_agreement']):>6}"
            )
        for pair, c in entry["cross"].items():
            a, b = pair.split("|", 1)
            print(
                f"    {a} vs {b}: pair agreement {_fmt(c['pair_agreement'])} over {c['n_pairs']} label pairs, "
                f"majorities agree on {_fmt(c['majority_agreement'])} of {c['n_items']} items"
            )


def _status(args: argparse.Namespace) -> int:
    campaigns = _store(args).campaigns()
    if not campaigns:
        print("no campaigns yet (rlhfkit annotate create FILE --name NAME)")
        return 0
    print(f"{'campaign':<24} {'kind':<9} {'items labelled':>15} {'labels':>13}")
    for c in campaigns:
        items = f"{c['labelled_items']}/{c['total_items']}"
        labels = f"{c['labels']}/{c['required_labels']}"
        print(f"{c['name']:<24} {c['kind']:<9} {items:>15} {labels:>13}")
    return 0


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get(DB_ENV, "annotations.db"),
        help=f"SQLite file or SQLAlchemy URL [default: ${DB_ENV} or annotations.db]",
    )


def _add_commands(asub: argparse._SubParsersAction) -> None:
    p = asub.add_parser("serve", help="run the web app for raters (and the admin API)")
    _db_option(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on [default: 127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [default: 8000]")
    p.add_argument(
        "--admin-token-file",
        help=f"read the admin token (at least 32 characters) from this file's first line [default: ${ADMIN_ENV}, "
        "or generated and printed once]",
    )
    p.add_argument("--admin-token", help="the admin token itself (visible to other users in `ps`: prefer the above)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level [default: warning]")
    p.set_defaults(handler=_serve)

    p = asub.add_parser("create", help="create a campaign from sampled responses or pairs")
    _db_option(p)
    p.add_argument(
        "file", help='rows {"prompt", "responses": [...]} (rlhfkit sample), {"prompt", "a", "b"} or chosen/rejected'
    )
    p.add_argument("--name", required=True, help="campaign name")
    p.add_argument("--kind", choices=("pairwise", "ranking"), default="pairwise", help="[default: pairwise]")
    p.add_argument("--raters-per-item", type=int, default=1, help="distinct raters per item [default: 1]")
    p.add_argument("--rubric", help="instructions raters see")
    p.add_argument("--rubric-file", help="read the rubric from this file")
    p.add_argument("--dimensions", help="comma-separated rubric dimensions, each with its own A/B/tie")
    p.add_argument("--strength-scale", type=int, default=3, help="strength choices 1..N (1 = none) [default: 3]")
    p.add_argument("--gold", help='gold items with known answers: rows with "gold": "0"|"1"|"tie", or chosen/rejected')
    p.add_argument("--raters", help="comma-separated rater names to assign [default: every rater]")
    p.add_argument("--seed", type=int, default=0, help="seed of assignment and display order [default: 0]")
    p.add_argument(
        "--pairs",
        choices=("chain", "all"),
        default="chain",
        help="pairs from K>2 responses (pairwise) [default: chain]",
    )
    p.set_defaults(handler=_create)

    p = asub.add_parser("add-rater", help="add a rater and print their token once")
    _db_option(p)
    p.add_argument("name", help="rater name")
    p.add_argument("--reset", action="store_true", help="issue a new token for an existing rater")
    p.add_argument(
        "--attr",
        action="append",
        metavar="NAME=VALUE",
        help="an attribute for audits, e.g. --attr age=18-29 (repeatable; admins see it, raters never do; "
        "with --reset: replaces the rater's attributes)",
    )
    p.set_defaults(handler=_add_rater)

    p = asub.add_parser("set-attributes", help="replace a rater's audit attributes (none given: remove them)")
    _db_option(p)
    p.add_argument("name", help="rater name")
    p.add_argument("--attr", action="append", metavar="NAME=VALUE", help="an attribute, e.g. --attr region=EU")
    p.set_defaults(handler=_set_attributes)

    p = asub.add_parser("raters", help="list raters and their audit attributes")
    _db_option(p)
    p.set_defaults(handler=_raters)

    p = asub.add_parser("export", help="write a campaign's labels as preference (or ranking) rows")
    _db_option(p)
    p.add_argument("--campaign", required=True, help="campaign name")
    p.add_argument("--output", "-o", required=True, help="output .jsonl")
    p.add_argument(
        "--adjudication",
        choices=("majority", "median", "none"),
        default="majority",
        help="one row per item (majority / median) or per label (none) [default: majority]",
    )
    p.add_argument("--dimension", help="export this rubric dimension's choices instead of the overall one")
    p.add_argument(
        "--partial",
        action="store_true",
        help="export before every item has all its labels (refused otherwise): partial votes are adjudicated",
    )
    p.set_defaults(handler=_export)

    p = asub.add_parser("quality", help="agreement: Cohen / Fleiss kappa, Krippendorff alpha, per-rater, gold")
    _db_option(p)
    p.add_argument("--campaign", required=True, help="campaign name")
    p.add_argument("--adjudication", choices=("majority", "median"), default="majority", help="[default: majority]")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(handler=_quality)

    p = asub.add_parser("status", help="labelled / total per campaign")
    _db_option(p)
    p.set_defaults(handler=_status)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `rlhfkit annotate ...` to the main CLI."""
    p = sub.add_parser(
        "annotate",
        help="human feedback: web app for raters, campaigns, agreement, export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_commands(p.add_subparsers(dest="annotate_command", required=True, metavar="COMMAND"))


def main(argv: list[str] | None = None) -> int:
    """`python -m rlhfkit.feedback.annotate_cli ...`: the same commands without loading the training CLI."""
    parser = argparse.ArgumentParser(prog="rlhfkit annotate", description=__doc__)
    _add_commands(parser.add_subparsers(dest="annotate_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, OSError) as e:
        print(f"rlhfkit annotate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
