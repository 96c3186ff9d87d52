"""The keys of each `rlhf label` subcommand, as `rlhf.config` dataclasses, with their checks."""

from dataclasses import dataclass
from typing import ClassVar

from rlhf.config import key
from rlhf.errors import ConfigError
from rlhf.sampling import Sampling

DB_HELP = "labeling database file"


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """Refuse a key that is not an integer in [minimum, maximum]."""
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer {bound}, got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"--{name.replace('_', '-')} is a flag (true or false), got {value!r}")


def check_text(name: str, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"--{name.replace('_', '-')} needs a value")


@dataclass
class ServeConfig:
    """serve the labeling page and its API (the database must exist: `rlhf label import` makes it)"""

    db: str = key("labels.sqlite", DB_HELP)
    host: str = key("127.0.0.1", "address to listen on")
    port: int = key(8000, "port to listen on")
    guidelines: str | None = key(None, "markdown file shown to annotators (default: the packaged guidelines)")
    overlap: int | None = key(None, "annotators per pair (K); stored in the database")

    def __post_init__(self):
        check_int("port", self.port, 1, 65535)
        if self.overlap is not None:
            check_int("overlap", self.overlap, 1)


@dataclass
class ImportConfig:
    """add pairs from a JSONL/JSON/CSV/Parquet file"""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("file",)
    file: str = key("", "file of {prompt, response_a, response_b[, model_a, model_b, id]} rows")
    db: str = key("labels.sqlite", DB_HELP)

    def __post_init__(self):
        check_text("file", self.file)


@dataclass
class GenerateConfig(Sampling):
    """sample responses from a policy and add them as pairs"""

    n: int = key(2, "completions per prompt; every two distinct ones make a pair")
    max_new_tokens: int = key(256, "response length limit")
    db: str = key("labels.sqlite", DB_HELP)
    model: str = key("", "run directory or model name")
    prompts: str = key("", "file with a 'prompt' field per row")

    def __post_init__(self):
        check_text("model", self.model)
        check_text("prompts", self.prompts)


@dataclass
class AddAnnotatorConfig:
    """create an annotator and print their token (shown only once)"""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("name",)
    name: str = key("", "the annotator's unique name")
    db: str = key("labels.sqlite", DB_HELP)
    admin: bool = key(False, "may see the admin page, export and stats")

    def __post_init__(self):
        check_text("name", self.name)
        check_bool("admin", self.admin)


@dataclass
class AnnotatorsConfig:
    """list annotators with role, labels, edits and speed; or revoke or rotate one's token"""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("action", "name")
    action: str = key("list", "list, revoke NAME, or rotate NAME (prints the new token once)")
    name: str = key("", "the annotator to revoke or rotate")
    db: str = key("labels.sqlite", DB_HELP)

    def __post_init__(self):
        if self.action not in ("list", "revoke", "rotate"):
            raise ConfigError(f"annotators: action must be list, revoke or rotate, got {self.action!r}")
        if self.action != "list":
            check_text("name", self.name)


@dataclass
class ExportConfig:
    """write preference pairs for the reward stage (or, with --raw, every vote)"""

    db: str = key("labels.sqlite", DB_HELP)
    out: str = key("", "output JSONL file")
    min_votes: int = key(1, "leave out pairs with fewer votes")
    keep_ties: bool = key(False, "write tied pairs in both orders with margin 0")
    keep_both_bad: bool = key(False, "write both-bad pairs like ties")
    raw: bool = key(False, "every current vote: annotator, choice, strength, reason, time, order shown, models")
    force: bool = key(False, "replace an existing file that is not a previous export")

    def __post_init__(self):
        check_text("out", self.out)
        check_int("min_votes", self.min_votes, 0)
        for name in ("keep_ties", "keep_both_bad", "raw", "force"):
            check_bool(name, getattr(self, name))


@dataclass
class StatsConfig:
    """labels per annotator and inter-annotator agreement"""

    db: str = key("labels.sqlite", DB_HELP)
    json: bool = key(False, "print JSON instead of text")

    def __post_init__(self):
        check_bool("json", self.json)


@dataclass
class SimulateConfig:
    """label pending pairs with simulated annotators"""

    db: str = key("labels.sqlite", DB_HELP)
    rule: str = key("", "MODULE:FUNCTION judge(prompt, a, b) -> 'a'|'b'|'tie'")
    annotators: int = key(3, "simulated annotators sim-1 ... sim-N")
    noise: float = key(0.0, "probability of a coin-flip answer")
    seed: int = key(0, "random seed")

    def __post_init__(self):
        check_text("rule", self.rule)
        check_int("annotators", self.annotators, 1)
        check_int("seed", self.seed, 0)
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not 0 <= self.noise <= 1:
            raise ConfigError(f"--noise must be a probability from 0 to 1, got {self.noise!r}")
