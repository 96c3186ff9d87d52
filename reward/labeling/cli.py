"""`rlhf label ...`: serve the labeling page, fill the store, add annotators, export votes, report agreement."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reward.labeling.store import Store
from rlhf.errors import ConfigError
from rlhf.sampling import add_sampling_args, sampling_from_args

DEFAULT_GUIDELINES = Path(__file__).resolve().parent / "guidelines.md"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf label", description="Human preference labeling.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--db", default="labels.sqlite", help="labeling database (default: labels.sqlite)")
        return sub

    serve = command("serve", "serve the labeling page and its API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--guidelines", type=Path, help="markdown file shown to annotators")
    serve.add_argument("--overlap", type=int, help="annotators per pair (K); stored in the database")

    load = command("import", "add pairs from a JSONL/JSON/CSV/Parquet file")
    load.add_argument("file", type=Path)

    gen = command("generate", "sample responses from a policy and add them as pairs")
    gen.add_argument("--model", required=True, help="run directory or model name")
    gen.add_argument("--prompts", required=True, type=Path, help="file with a 'prompt' field per row")
    add_sampling_args(gen, n=2, max_new_tokens=256)  # each two distinct completions of a prompt make a pair

    add = command("add-annotator", "create an annotator and print their token (shown only once)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may export, see stats and list annotators over HTTP")

    export = command("export", "write preference pairs for the reward stage")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--min-votes", type=int, default=1, help="leave out pairs with fewer votes (default 1)")
    export.add_argument("--keep-ties", action="store_true", help="write tied pairs in both orders with margin 0")
    export.add_argument("--keep-both-bad", action="store_true", help="write both-bad pairs like ties")

    stats = command("stats", "labels per annotator and inter-annotator agreement")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")

    simulate = command("simulate", "label pending pairs with simulated annotators")
    simulate.add_argument("--annotators", type=int, default=3)
    simulate.add_argument("--rule", required=True, help="MODULE:FUNCTION judge(prompt, a, b) -> 'a'|'b'|'tie'")
    simulate.add_argument("--noise", type=float, default=0.0, help="probability of a coin-flip answer")
    simulate.add_argument("--seed", type=int, default=0)
    return parser


def _read_guidelines(path: Path | None) -> str:
    if path is None:
        return DEFAULT_GUIDELINES.read_text(encoding="utf-8")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--guidelines {path}: cannot read: {e}") from e


def _serve(args) -> int:
    import uvicorn

    from reward.labeling.server import create_app

    store = Store(args.db)
    if args.overlap is not None:
        store.set_overlap(args.overlap)
    app = create_app(store, _read_guidelines(args.guidelines))
    print(f"labeling {args.db} (overlap {store.overlap()}) at http://{args.host}:{args.port}/", file=sys.stderr)
    if args.host not in LOOPBACK:
        print("note: this is plain HTTP; put it behind an HTTPS reverse proxy before others reach it", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, server_header=False)
    return 0


def _import(args) -> int:
    from reward.labeling.importing import read_pairs

    pairs = read_pairs(args.file)
    added, present = Store(args.db).add_pairs(pairs)
    print(f"added {added} pairs from {args.file} ({present} already in {args.db})")
    return 0


def _generate(args) -> int:
    from reward.labeling.generate import generate_pairs

    pairs, dropped = generate_pairs(args.model, args.prompts, sampling_from_args(args))
    added, present = Store(args.db).add_pairs(pairs)
    print(f"added {added} pairs ({present} already present; {dropped} empty or repeated completions left out)")
    return 0


def _add_annotator(args) -> int:
    token = Store(args.db).add_annotator(args.name, args.admin)
    role = "admin" if args.admin else "annotator"
    print(f"{role} '{args.name}' created; their token (store it now, it is not kept):", file=sys.stderr)
    print(token)
    return 0


def _export(args) -> int:
    from reward.labeling.export import export_file

    result = export_file(
        Store(args.db, create=False),
        args.out,
        min_votes=args.min_votes,
        keep_ties=args.keep_ties,
        keep_both_bad=args.keep_both_bad,
    )
    print(f"{result.summary()}\nwrote {args.out}")
    return 0


def _stats(args) -> int:
    from reward.labeling.stats import compute_stats, format_stats

    stats = compute_stats(Store(args.db, create=False))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _simulate(args) -> int:
    from reward.labeling.simulate import load_rule, simulate_annotators

    written = simulate_annotators(args.db, load_rule(args.rule), args.annotators, args.noise, args.seed)
    print(f"{args.annotators} simulated annotators wrote {written} labels")
    return 0


HANDLERS = {
    "serve": _serve,
    "import": _import,
    "generate": _generate,
    "add-annotator": _add_annotator,
    "export": _export,
    "stats": _stats,
    "simulate": _simulate,
}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return HANDLERS[args.command](args)
