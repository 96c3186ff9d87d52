"""`rlhf label ...`: serve the labeling page, fill the store, manage annotators, export votes, report agreement."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from reward.labeling import commands as c
from reward.labeling.store import Store
from rlhf.config import command_main, import_function
from rlhf.errors import ConfigError

DEFAULT_GUIDELINES = Path(__file__).resolve().parent / "guidelines.md"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHOW_PRESENT = 10  # lines of already-present pairs an import names before summarising the rest


def _read_guidelines(path: str | None) -> str:
    if path is None:
        return DEFAULT_GUIDELINES.read_text(encoding="utf-8")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--guidelines {path}: cannot read: {e}") from e


def _serve(config: c.ServeConfig) -> int:
    import uvicorn

    from reward.labeling.middleware import ACCESS_LOG
    from reward.labeling.server import create_app

    store = Store(config.db, create=False)
    if config.overlap is not None:
        store.set_overlap(config.overlap)
    app = create_app(store, _read_guidelines(config.guidelines))
    print(f"labeling {config.db} (overlap {store.overlap()}) at http://{config.host}:{config.port}/"
          f" (admin page: /admin)", file=sys.stderr)
    if config.host not in LOOPBACK:
        print("note: this is plain HTTP; put it behind an HTTPS reverse proxy before others reach it", file=sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    # uvicorn's own access log prints query strings; ours (middleware.AccessLog) never does
    uvicorn.run(app, host=config.host, port=config.port, server_header=False, access_log=False)
    return 0


def _report_added(added: int, present_at: list[tuple[str, str]], source: str, db: str) -> None:
    print(f"added {added} pairs from {source} ({len(present_at)} already in {db})")
    for where, pair_id in present_at[:SHOW_PRESENT]:
        print(f"  {where}: already in as '{pair_id}'")
    if len(present_at) > SHOW_PRESENT:
        print(f"  ... and {len(present_at) - SHOW_PRESENT} more")


def _import(config: c.ImportConfig) -> int:
    from reward.labeling.importing import read_pairs

    pairs = read_pairs(config.file)
    present_at: list[tuple[str, str]] = []
    added, _ = Store(config.db).add_pairs(pairs, present_at)
    _report_added(added, present_at, config.file, config.db)
    return 0


def _generate(config: c.GenerateConfig) -> int:
    from reward.labeling.generate import generate_pairs

    pairs, dropped = generate_pairs(config.model, config.prompts, config.sampling())
    added, present = Store(config.db).add_pairs(pairs)
    print(f"added {added} pairs ({present} already present; {dropped} empty or repeated completions left out)")
    return 0


def _add_annotator(config: c.AddAnnotatorConfig) -> int:
    token = Store(config.db).add_annotator(config.name, config.admin)
    role = "admin" if config.admin else "annotator"
    print(f"{role} '{config.name}' created; their token (store it now, it is not kept):", file=sys.stderr)
    print(token)
    return 0


def _annotators(config: c.AnnotatorsConfig) -> int:
    store = Store(config.db, create=False)
    if config.action == "revoke":
        store.revoke_annotator(config.name)
        print(f"revoked '{config.name}': their token no longer works (their labels stay)")
    elif config.action == "rotate":
        token = store.rotate_token(config.name)
        print(f"new token for '{config.name}' (the old one no longer works; store it now):", file=sys.stderr)
        print(token)
    else:
        print(f"{'name':<20} {'role':<9} {'status':<8} {'labeled':>7} {'skipped':>7} {'edits':>5} {'median s':>8}")
        for a in store.annotator_table():
            median = "-" if a["median_seconds"] is None else f"{a['median_seconds']:.1f}"
            print(f"{a['name']:<20} {'admin' if a['is_admin'] else 'annotator':<9} "
                  f"{'revoked' if a['revoked'] else 'active':<8} {a['labeled']:>7} {a['skipped']:>7} "
                  f"{a['edits']:>5} {median:>8}")
    return 0


def _export(config: c.ExportConfig) -> int:
    from reward.labeling.export import export_file, export_raw

    store = Store(config.db, create=False)
    if config.raw:
        print(f"exported {export_raw(store, config.out, config.force)} votes\nwrote {config.out}")
        return 0
    result = export_file(store, config.out, config.force, min_votes=config.min_votes, keep_ties=config.keep_ties,
                         keep_both_bad=config.keep_both_bad)
    print(f"{result.summary()}\nwrote {config.out}")
    return 0


def _stats(config: c.StatsConfig) -> int:
    from reward.labeling.stats import compute_stats, format_stats

    stats = compute_stats(Store(config.db, create=False))
    print(json.dumps(stats, indent=2) if config.json else format_stats(stats))
    return 0


def _simulate(config: c.SimulateConfig) -> int:
    from reward.labeling.simulate import simulate_annotators

    judge = import_function(config.rule, "rule")
    written = simulate_annotators(config.db, judge, config.annotators, config.noise, config.seed)
    print(f"{config.annotators} simulated annotators wrote {written} labels")
    return 0


SUBCOMMANDS = {
    "serve": (c.ServeConfig, _serve),
    "import": (c.ImportConfig, _import),
    "generate": (c.GenerateConfig, _generate),
    "add-annotator": (c.AddAnnotatorConfig, _add_annotator),
    "annotators": (c.AnnotatorsConfig, _annotators),
    "export": (c.ExportConfig, _export),
    "stats": (c.StatsConfig, _stats),
    "simulate": (c.SimulateConfig, _simulate),
}


def _usage() -> str:
    lines = ["usage: rlhf label COMMAND [ARGS]", "", "Human preference labeling.", "", "commands:"]
    lines += [f"  {name:<14} {cls.__doc__.strip()}" for name, (cls, _) in SUBCOMMANDS.items()]
    lines += ["", "Run `rlhf label COMMAND --help` for a command's keys."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise ConfigError(f"rlhf label: unknown command '{name}' (one of {', '.join(SUBCOMMANDS)})")
    cls, run = SUBCOMMANDS[name]
    return command_main(rest, cls, f"rlhf label {name}: {cls.__doc__.strip()}", run)
