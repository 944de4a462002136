"""Runtime configuration: one `Settings`, read from `PERSONAIZER_*` and validated at start.

Plans start here: the defaults of the contract (API.md section 7), which an operator can
override or extend with `PERSONAIZER_PLANS` (JSON) or a JSON/TOML file named by
`PERSONAIZER_PLANS_FILE`. They are only the seed of the database's `plans` table (written when
it is empty, or by `personaizer plans import`); servers read the table. Tests build their
settings through `Settings.for_tests` only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self, TypeAlias

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """`"10.0.0.1"` or `"10.0.0.0/8"` (IPv6 alike) -> networks; ValueError names a bad entry."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from exc
    return tuple(networks)


class PlanLimits(BaseModel):
    """The limits of one plan; the field names are the contract's."""

    knowledge_docs: int = Field(ge=0)
    knowledge_chars: int = Field(ge=0)
    doc_chars: int = Field(ge=1)
    personas: int = Field(ge=0)
    batch_items: int = Field(ge=1)
    reads_per_minute: int = Field(ge=1)
    writes_per_minute: int = Field(ge=1)
    searches_per_minute: int = Field(ge=1)


class Plan(BaseModel):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str
    limits: PlanLimits


DEFAULT_PLANS: dict[str, Plan] = {
    "free": Plan(
        id="free",
        name="Free",
        limits=PlanLimits(
            knowledge_docs=100,
            knowledge_chars=2_000_000,
            doc_chars=100_000,
            personas=3,
            batch_items=100,
            reads_per_minute=600,
            writes_per_minute=120,
            searches_per_minute=60,
        ),
    ),
    "pro": Plan(
        id="pro",
        name="Pro",
        limits=PlanLimits(
            knowledge_docs=10_000,
            knowledge_chars=200_000_000,
            doc_chars=500_000,
            personas=50,
            batch_items=100,
            reads_per_minute=3_000,
            writes_per_minute=600,
            searches_per_minute=600,
        ),
    ),
    "unlimited": Plan(
        id="unlimited",
        name="Unlimited",
        limits=PlanLimits(
            knowledge_docs=1_000_000,
            knowledge_chars=20_000_000_000,
            doc_chars=1_000_000,
            personas=10_000,
            batch_items=500,
            reads_per_minute=60_000,
            writes_per_minute=12_000,
            searches_per_minute=12_000,
        ),
    ),
}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def user_cache_dir() -> Path | None:
    """`$XDG_CACHE_HOME/personaizer` (else `~/.cache/personaizer`) when it exists or can be made
    (the exported model is derived from the package, so one copy serves every data dir and a
    new data dir starts in a second); None when there is no writable home (a container user
    without one), and the caller falls back to the data dir."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    try:
        root = Path(base) if base else Path.home() / ".cache"
        path = root / "personaizer"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERSONAIZER_", extra="ignore")

    data_dir: Path = Path("./data")
    #: Empty: the embedded SQLite file `<data_dir>/personaizer.db`. Or `sqlite:///path.db`, or
    #: `postgresql://user:password@host:5432/db` (PostgreSQL with the pgvector extension).
    database_url: str = ""
    #: PostgreSQL: connections per server process (and as many more under load).
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    #: PostgreSQL reached through a pooler: `transaction` for PgBouncer's (or another pooler's)
    #: transaction pooling, where consecutive transactions of one connection may run on
    #: different server connections: statements are then never kept prepared across
    #: transactions (docs/scaling.md, "Connections"). `none`: a direct connection.
    database_pooler: Literal["none", "transaction"] = "none"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * MiB, ge=1024)
    #: The most a POST to the MCP door at /mcp may hold, refused with 413 before it is parsed.
    #: Far below `max_body_bytes`: MCP only reads, and its largest real call, a search scoped to
    #: 1000 external_ids of 128 characters, is about 140 KB (with a 1000-character query and
    #: 8 KiB of metadata, every character escaped as `\\uXXXX`, under 200 KB).
    mcp_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    #: The plan of a user created without one; it must be in the `plans` table then.
    default_plan: str = "free"
    #: JSON object of plan id -> plan (merged over the defaults): the seed of the `plans`
    #: table, not what servers read (docs/scaling.md, "Plans").
    plans: dict[str, Plan] = Field(default_factory=dict)
    plans_file: Path | None = None
    #: Seconds a server keeps the `plans` table in memory: a change made by
    #: `personaizer plans set` reaches every server within this, without a restart.
    plans_refresh_s: float = Field(default=5.0, ge=0)
    redis_url: str = ""
    #: Days a deleted document's tombstone stays in the changes feed (API.md section 11) before
    #: it may be purged; a feed token older than the purged history is 410
    #: `knowledge.changes_expired`. Fractions are allowed (tests use tiny ones); 0 purges every
    #: tombstone at the user's next delete.
    changes_retention_days: float = Field(default=30.0, ge=0, le=36_500)
    #: With `redis_url`, while Redis cannot be reached: `open` keeps serving, each process
    #: counting in its own memory at 1/`rate_limit_processes` of every budget until Redis answers
    #: again (as Envoy's failure_mode_deny=false, Kong's fault_tolerant); `closed` refuses API
    #: requests with 503 until then.
    rate_limit_on_redis_failure: Literal["open", "closed"] = "open"
    #: Server processes sharing `redis_url` (servers x workers each): while Redis is unreachable
    #: under `open`, each process allows this share of a budget, so all together allow about one.
    rate_limit_processes: int = Field(default=1, ge=1, le=100_000)
    #: Seconds to wait for a write lock held by another process before answering 503.
    busy_timeout_s: float = Field(default=10.0, gt=0)
    #: Load the sentence-transformers model; tests may share one loaded model instead.
    embedder_batch_size: int = Field(default=32, ge=1, le=512)
    #: Threads embedding documents side by side, each a micro-batch at a time, sharing the cores
    #: (app/embedding/embedder.py): by default one per core this process may run on, at most 4. (A
    #: container limited by a CPU quota rather than a CPU set sees the host's cores: set it.)
    embedder_bulk_workers: int = Field(
        default_factory=lambda: max(1, min(4, usable_cores())), ge=1, le=64
    )
    #: SQLite: megabytes of chunk float vectors each server process keeps across searches (least
    #: recently used out; ~1.8 KB a chunk, so 64 MB holds ~36,000 chunks): a search's exact
    #: scoring then reads from the database only the vectors no recent search read; as much
    #: again for whole users of up to 10,000 chunks (app/storage/index/resident.py). 0: none.
    vector_cache_mb: int = Field(default=64, ge=0, le=1_000_000)
    #: SQLite: a user with at least this many chunks is searched through a partition of their
    #: bit vectors into lists, kept in memory (app/storage/index/partition.py): a pass ranks the
    #: lists nearest the query instead of every chunk, approximate but fast at a million chunks
    #: (docs/scaling.md). Smaller users keep the pass over all their chunks.
    partition_min_chunks: int = Field(default=50_000, ge=1)
    #: SQLite: megabytes of partitions each server process keeps (~215 bytes a chunk: 215 MB
    #: for a user of 1,000,000 chunks, 70 of them without the codes that spare most float
    #: vector reads, left out of a partition they would not fit with; least recently used
    #: out). 0: none, every user is searched by the pass over all their chunks.
    partition_cache_mb: int = Field(default=256, ge=0, le=1_000_000)
    #: What runs the embedding model: `onnx` (ONNX Runtime; the graph is exported from the
    #: bundled weights once, ~10 s, and cached) or `torch` (sentence-transformers). Both give the
    #: same vectors, so either reads the other's index. onnx is the default: it encodes a query
    #: about twice as fast, loads in a second and holds half the memory (docs/decisions.md).
    encoder: Literal["torch", "onnx"] = "onnx"
    #: Where the onnx encoder caches its exported model; unset: the user's cache directory
    #: (`$XDG_CACHE_HOME/personaizer`, else `~/.cache/personaizer`), shared by every data dir,
    #: or `<data_dir>/cache` when that cannot be written.
    encoder_cache_dir: Path | None = None
    #: An exported model made ahead of time (`python -m app.embedding.onnx_export DIR`): the onnx
    #: encoder runs from it, checked and never exported, so neither torch nor a cache is needed
    #: (the Docker image). Unset: a one-file build's own model, else the cache above.
    encoder_model_dir: Path | None = None
    #: The onnx encoder's threads for a search's query, which someone waits for (0: every core
    #: this process may run on), in the one ONNX Runtime session documents are encoded on too.
    encoder_query_threads: int = Field(default=0, ge=0, le=256)
    #: Unset: documents are encoded on that same session, one call per bulk worker side by side
    #: (each call takes the session's threads as they are free). Set: a second session over the
    #: same graph with these threads a call (0: one per physical core) for documents alone:
    #: about 90 MB more memory per process, for the isolation of queries from documents on a
    #: machine with cores to spare (app/embedding/onnx_encoder.py, docs/scaling.md).
    encoder_threads: int | None = Field(default=None, ge=0, le=256)
    log_level: str = "INFO"
    #: Where the operator runs it: "local" allows development defaults such as a generated
    #: session secret; anything else requires explicit secrets.
    environment: str = "local"
    session_secret: str = ""
    #: The GraphQL explorer at GET /graphql (served from the package, no CDN); unset means on
    #: everywhere but production.
    graphiql: bool | None = None
    #: `GET /metrics` (Prometheus text, unauthenticated, for operators).
    metrics: bool = True
    #: `text` log lines, or `json`: one object per line with the request id.
    log_format: Literal["text", "json"] = "text"
    #: Host names the MCP door at /mcp answers besides loopback and `host` (DNS-rebinding guard),
    #: e.g. the public name of a server behind a proxy; JSON list in the environment.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: The most a GraphQL operation may cost (app/graphql/document_limits.py): each field counts 1 and
    #: the fields under a page (`first`) or a search (`k`) count once per item it may return.
    #: Resolving costs about 10 us of event loop per unit (measured: 50 personas x 50
    #: documents x 7 fields, cost 20,151, held the loop 0.2 s), so the default 10,000 keeps one
    #: request to about 0.1 s while the default nested page (`personas { items { knowledge {
    #: items { externalId } } } }`, 50 x 50, cost 5,101) still runs.
    graphql_max_cost: int = Field(default=10_000, ge=1)
    #: Browser origins allowed to call the API directly (CORS), e.g. a persona frontend at
    #: `https://app.example.com`; JSON list in the environment. Empty: no CORS headers at all.
    cors_origins: list[str] = Field(default_factory=list)
    #: Reverse proxies whose `X-Forwarded-For` is believed: addresses or CIDRs, JSON list in
    #: the environment (e.g. `["10.0.0.0/8"]`). Empty: the client is the connection's peer.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Failed API-key authentications one client address may make per minute; past it further
    #: failures answer 429 instead of 401 (a valid key is always accepted).
    auth_failures_per_minute: int = Field(default=30, ge=1)
    #: Dashboard sign-in attempts per minute (successful or not: each costs an argon2 check),
    #: per account and per client address. Past either, 429 before the password is checked.
    signin_attempts_per_account: int = Field(default=10, ge=1)
    signin_attempts_per_address: int = Field(default=30, ge=1)
    #: `personaizer serve`: seconds an idle connection is kept open waiting for a request.
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    #: `personaizer serve`: seconds a request has, from its first byte, to arrive whole (request
    #: line, headers and body); a client trickling it slower is cut off.
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    #: `personaizer serve`: open connections (and requests in flight) at most; beyond it a
    #: request is answered 503 `server.unavailable` at once.
    max_connections: int = Field(default=1000, ge=1)

    @field_validator("default_plan")
    @classmethod
    def _plan_id(cls, v: str) -> str:
        return v.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        # Normalised here so that a typo stops the server at start, not at the first request.
        return [str(network) for network in parse_networks(v)]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.default_plan not in self.all_plans:
            raise ValueError(
                f"default_plan {self.default_plan!r} is not a configured plan "
                f"({', '.join(sorted(self.all_plans))})"
            )
        if self.environment != "local" and len(self.session_secret) < 32:
            raise ValueError(
                "PERSONAIZER_SESSION_SECRET must be set (32+ characters) outside local use"
            )
        return self

    @cached_property
    def all_plans(self) -> dict[str, Plan]:
        plans = dict(DEFAULT_PLANS)
        if self.plans_file is not None:
            plans.update(_read_plans_file(self.plans_file))
        for key, plan in self.plans.items():
            if key != plan.id:
                raise ValueError(f"plan key {key!r} differs from its id {plan.id!r}")
            plans[key] = plan
        return plans

    @cached_property
    def trusted_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def graphiql_enabled(self) -> bool:
        return self.graphiql if self.graphiql is not None else self.environment != "production"

    @property
    def encoder_query_thread_count(self) -> int:
        return self.encoder_query_threads or usable_cores()

    @property
    def encoder_cache_path(self) -> Path:
        if self.encoder_cache_dir is not None:
            return self.encoder_cache_dir
        shared = user_cache_dir()
        return shared if shared is not None else self.data_dir / "cache"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "personaizer.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @classmethod
    def for_tests(cls, data_dir: Path, **overrides: Any) -> Settings:
        """The one way tests build settings: isolated from the caller's environment."""
        return cls.model_validate({"data_dir": data_dir, **overrides})


def _read_plans_file(path: Path) -> dict[str, Plan]:
    text = path.read_text(encoding="utf-8")
    raw: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if isinstance(raw, dict) and "plans" in raw:
        raw = raw["plans"]
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of plan id -> plan")
    out: dict[str, Plan] = {}
    for key, value in raw.items():
        plan = Plan.model_validate({"id": key, **value} if isinstance(value, dict) else value)
        out[plan.id] = plan
    return out
