"""The browser widget in examples/widget, as a customer would run it: a real `personaizer serve`
(SQLite, and PostgreSQL on its own server), its backend `mint.py` as a second process on another
port (so another origin), and the page in a real headless Chromium.

The page greets with the persona, finds the right document as a question is typed (debounced,
the newest answer wins, every text escaped), on a desktop and a phone; the token it holds is
refused every write, and a token for another persona sees nothing of this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from app.client.tokens import mint_token
from tests.support import pg, servers
from tests.support.live import LiveServer
from tests.web.conftest import DESKTOP, PHONE

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request, Route

MINT = Path(__file__).resolve().parents[2] / "examples" / "widget" / "mint.py"
PASSWORD = "correct horse battery"

#: The persona's knowledge: distinct enough that each question has one right answer. One title
#: is markup, which the page must show as text.
DOCS = [
    {
        "external_id": "faq:shipping",
        "title": "Shipping times",
        "content": "Orders ship within two business days. Delivery takes three to five days.",
    },
    {
        "external_id": "faq:returns",
        "title": "Returns and refunds",
        "content": "You can send any item back within 30 days and we refund the full price.",
    },
    {
        "external_id": "faq:gift-cards",
        "title": '<img src=x onerror="document.title=1">Gift cards & vouchers',
        "content": "Gift cards can be bought in any amount and never expire.",
    },
]
#: The other persona's only document.
OTHER_DOC = {
    "external_id": "guide:espresso",
    "title": "Espresso machine setup",
    "content": "Fill the water tank, grind the beans finely and tamp them firmly.",
}
GREETING = "Hi, I'm Ava. Ask me about your order."
Cli = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Setup:
    """One engine's server with a user, two personas and the widget's backend running."""

    api: str
    page_url: str
    owner_key: str
    persona_id: str
    other_persona_id: str
    key_prefix: str
    signing_secret: str

    @property
    def origin(self) -> str:
        return self.page_url.rstrip("/")


class Setups:
    """Built on first use per engine and kept for the module: a server (and its model) and
    mint.py start once per engine, not per test."""

    def __init__(self, stack: ExitStack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.built: dict[str, Setup] = {}

    def get(self, engine: str, request: pytest.FixtureRequest) -> Setup:
        if engine not in self.built:
            if engine == "sqlite":
                live: LiveServer = request.getfixturevalue("live_server")
                api, cli = live.url, live.run
            else:
                api, cli = self.stack.enter_context(
                    postgres_server(request.getfixturevalue("postgres"), self.tmp / "pg")
                )
            self.built[engine] = self.stack.enter_context(widget_for(api, cli, self.tmp / engine))
        return self.built[engine]


@contextmanager
def postgres_server(postgres: pg.PostgresServer, tmp: Path) -> Iterator[tuple[str, Cli]]:
    name = f"widget_{uuid.uuid4().hex[:8]}"
    postgres.run_sync(f"CREATE DATABASE {name} TEMPLATE {pg.TEMPLATE}")
    env = servers.clean_env(data_dir=str(tmp / "data"), database_url=postgres.url(name))
    tmp.mkdir(parents=True, exist_ok=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return servers.personaizer(*args, env=env)

    try:
        with servers.serve(env=env, log=tmp / "serve.log") as api:
            yield api, cli
    finally:
        postgres.run_sync(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_ok(cli: Cli, *args: str) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def widget_for(api: str, cli: Cli, tmp: Path) -> Iterator[Setup]:
    """A user with DOCS attached to Ava and OTHER_DOC to Leo, a key that may only search and
    read those two personas from the widget's origin (`keys create` as examples/widget/README.md
    runs it), and mint.py serving the page for Ava with the key's prefix and signing secret."""
    email = f"widget-{uuid.uuid4().hex[:8]}@example.com"
    run_ok(cli, "users", "create", email, "--plan", "unlimited")
    owner_key = run_ok(cli, "keys", "create", email, "--name", "owner").strip().splitlines()[-1]
    with httpx.Client(base_url=api, headers={"X-Api-Key": owner_key}, timeout=60) as http:
        r = http.put("/api/knowledge/docs", json={"items": [*DOCS, OTHER_DOC]})
        assert r.status_code == 200, r.text
        ava = http.post(
            "/api/personas",
            json={"name": "Ava", "instructions": "Answer from the FAQ.", "greeting": GREETING},
        ).json()["id"]
        leo = http.post(
            "/api/personas", json={"name": "Leo", "instructions": "Explain the machines."}
        ).json()["id"]
        for persona, docs in ((ava, DOCS), (leo, [OTHER_DOC])):
            r = http.put(
                f"/api/personas/{persona}/knowledge",
                json={"external_ids": [d["external_id"] for d in docs]},
            )
            assert r.status_code == 200, r.text

    port = servers.free_port()
    origin = f"http://127.0.0.1:{port}"
    created = run_ok(
        cli,
        *("keys", "create", email, "--name", "widget", "--scopes", "search,personas:read"),
        *("--personas", f"{ava},{leo}", "--origins", origin, "--json"),
    )
    key = json.loads(created)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAIZER_", "WIDGET_"))}
    env.update(
        WIDGET_API_URL=api,
        WIDGET_PERSONA_ID=ava,
        WIDGET_KEY_PREFIX=key["prefix"],
        WIDGET_SIGNING_SECRET=key["signing_secret"],
    )
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "mint.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, str(MINT), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until_ready(process, origin, api, log)
        yield Setup(api, f"{origin}/", owner_key, ava, leo, key["prefix"], key["signing_secret"])
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_until_ready(process: subprocess.Popen[bytes], origin: str, api: str, log: Path) -> None:
    """mint.py serves the page, and the API answers preflights from its origin: servers read
    the keys' origins every few seconds, so a key made a moment ago may not be known yet."""
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise AssertionError(f"mint.py exited with {process.returncode}: {log.read_text()}")
        try:
            page = httpx.get(origin + "/", timeout=2)
            cors = httpx.options(f"{api}/graphql", headers=preflight, timeout=2)
            if page.status_code == 200 and cors.headers.get("access-control-allow-origin"):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the widget is not ready: {log.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setups]:
    with ExitStack() as stack:
        yield Setups(stack, tmp_path_factory.mktemp("widget"))


@pytest.fixture
def setup(setups: Setups, engine: str, request: pytest.FixtureRequest) -> Setup:
    return setups.get(engine, request)


# --- helpers in the page ------------------------------------------------------------------------


def open_widget(page: Page, setup: Setup) -> None:
    page.goto(setup.page_url)
    page.wait_for_selector("#widget[data-ready=true]")


def ask(page: Page, question: str, *, type_it: bool = False) -> list[str]:
    """Put `question` in the box (key by key when `type_it`); the external_ids shown once the
    page shows the answer to it."""
    box = page.locator("#question")
    if type_it:
        box.press_sequentially(question, delay=15)
    else:
        box.fill(question)
    wait_for_answer(page, question)
    return hit_ids(page)


def wait_for_answer(page: Page, question: str) -> None:
    page.wait_for_function(
        "q => document.getElementById('results').dataset.query === q", arg=question
    )


def hit_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#results .hit", "els => els.map(e => e.dataset.externalId)"
    )
    return ids


def in_page(page: Page, script: str, *args: Any) -> Any:
    """Run `script` (an async function of `args`) in the widget page: its origin, its CORS."""
    return page.evaluate(script, list(args))


FETCH = """async ([url, init]) => {
    const r = await fetch(url, init);
    return {status: r.status, type: r.headers.get("content-type"), body: await r.json()};
}"""


def call(page: Page, url: str, token: str, method: str, body: object) -> dict[str, Any]:
    init = {
        "method": method,
        "headers": {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        "body": json.dumps(body),
    }
    answer: dict[str, Any] = page.evaluate(FETCH, [url, init])
    return answer


def graphql(page: Page, setup: Setup, token: str, query: str, **variables: Any) -> dict[str, Any]:
    answer = call(
        page, f"{setup.api}/graphql", token, "POST", {"query": query, "variables": variables}
    )
    assert answer["status"] == 200, answer
    body: dict[str, Any] = answer["body"]
    return body


def error_code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


def overflow(page: Page) -> int:
    width: int = page.evaluate(
        "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - window.innerWidth"
    )
    return width


def unexpected(console_errors: list[str]) -> list[str]:
    """Console errors other than Chromium's note on each 403 a test provokes on purpose."""
    return [e for e in console_errors if "the server responded with a status of 403" not in e]


SEARCH = """query ($q: String!, $p: ID) { search(query: $q, personaId: $p) {
    results { externalId } } }"""
PERSONA = "query ($id: ID!) { persona(id: $id) { name greeting } }"


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_page_greets_and_finds_the_right_document_as_one_types(
    page: Page, console_errors: list[str], setup: Setup, size: dict[str, int]
) -> None:
    page.set_viewport_size(size)  # type: ignore[arg-type]
    searches: list[str] = []

    def on_request(request: Request) -> None:
        if request.url == f"{setup.api}/graphql" and "search(" in (request.post_data or ""):
            searches.append(json.loads(request.post_data or "{}")["variables"]["query"])

    page.on("request", on_request)
    open_widget(page, setup)
    assert page.inner_text("#persona-name") == "Ava"
    assert page.inner_text("#greeting") == GREETING

    question = "how long until my parcel arrives"
    ids = ask(page, question, type_it=True)
    assert ids[0] == "faq:shipping", ids
    assert set(ids) <= {d["external_id"] for d in DOCS}  # Ava's documents only
    first = page.locator("#results .hit").first
    assert first.locator(".hit-title").inner_text() == "Shipping times"
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    # Debounced: the page asked once it was typed, not at every key.
    assert searches[-1] == question and len(searches) < len(question) // 2, searches

    assert ask(page, "can I send it back and get my money back")[0] == "faq:returns"

    # A title that is markup is shown as text, never parsed.
    assert ask(page, "do gift cards expire")[0] == "faq:gift-cards"
    title = page.locator("#results .hit-title").first
    assert title.inner_text() == DOCS[2]["title"]
    assert page.locator("#results img").count() == 0 and page.title() == "Ask our assistant"

    # Nothing related: nothing shown, rather than the least unrelated documents.
    assert ask(page, "what is the capital of France") == []
    assert page.inner_text("#status") == "Nothing found."

    assert overflow(page) <= 0
    # Emptying the box empties the list.
    page.fill("#question", "")
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length === 0")
    assert console_errors == []


#: Counts the answers the page has read, so a test knows when one has been handled.
COUNT_ANSWERS = """(() => {
    const read = Response.prototype.json;
    window.answersRead = 0;
    Response.prototype.json = async function () {
        try { return await read.call(this); } finally { window.answersRead += 1; }
    };
})();"""


@pytest.mark.engines("sqlite")  # the page's own logic; one engine is enough
def test_a_late_answer_to_an_older_question_never_replaces_the_newer_one(
    page: Page, console_errors: list[str], setup: Setup
) -> None:
    held: list[Route] = []

    def hold_the_first_question(route: Route) -> None:
        if "shipping" in (route.request.post_data or ""):
            held.append(route)  # answered only when the test says so
        else:
            route.continue_()

    page.route(f"{setup.api}/graphql", hold_the_first_question)
    page.add_init_script(COUNT_ANSWERS)
    open_widget(page, setup)
    page.fill("#question", "shipping")
    page.wait_for_function("() => document.getElementById('status').textContent === 'Searching…'")
    while not held:  # the browser's request reaches the route
        page.wait_for_timeout(50)
    assert ask(page, "refund for a returned item")[0] == "faq:returns"

    answers = page.evaluate("() => window.answersRead")
    held[0].continue_()
    # The page has read the late answer (and so has done with it: a poll runs after that task).
    page.wait_for_function("n => window.answersRead > n", arg=answers)
    assert page.locator("#results").get_attribute("data-query") == "refund for a returned item"
    assert hit_ids(page)[0] == "faq:returns"
    assert console_errors == []


@pytest.mark.engines("sqlite")  # the page's own logic; one engine is enough
def test_the_page_gets_a_new_token_when_its_token_is_refused(
    page: Page, console_errors: list[str], setup: Setup
) -> None:
    tokens: list[str] = []
    page.on(
        "response", lambda r: r.url == setup.page_url + "token" and tokens.append(r.json()["token"])
    )
    refused: list[int] = []

    def expire_the_first_token(route: Route) -> None:
        if "search(" in (route.request.post_data or "") and not refused:
            # What the API answers a token that has expired (or whose key was disabled).
            refused.append(len(tokens))
            route.fulfill(
                status=401,
                content_type="application/problem+json",
                headers={"Access-Control-Allow-Origin": setup.origin},
                body=json.dumps({"code": "auth.unauthorized", "status": 401}),
            )
        else:
            route.continue_()

    page.route(f"{setup.api}/graphql", expire_the_first_token)
    open_widget(page, setup)
    assert ask(page, "how long until my parcel arrives")[0] == "faq:shipping"
    # Refused while the page held its first token; answered after it asked for a second.
    assert refused == [1] and len(tokens) == 2
    assert [e for e in console_errors if "status of 401" not in e] == []


def test_the_pages_token_is_refused_every_write(
    page: Page, console_errors: list[str], setup: Setup
) -> None:
    with page.expect_request(lambda r: r.url == f"{setup.api}/graphql") as first:
        open_widget(page, setup)
    token = first.value.headers["authorization"].removeprefix("Bearer ")
    owner = {"X-Api-Key": setup.owner_key}
    before = httpx.get(f"{setup.api}/api/knowledge/docs/by-external-id/faq:shipping", headers=owner)
    personas_before = httpx.get(f"{setup.api}/api/personas", headers=owner).json()["total"]

    writes = [
        (
            f"{setup.api}/api/knowledge/docs/by-external-id/faq:shipping",
            "PUT",
            {"content": "Free!"},
        ),
        (
            f"{setup.api}/api/knowledge/docs",
            "PUT",
            {"items": [{"external_id": "new", "content": "x"}]},
        ),
        (f"{setup.api}/api/personas", "POST", {"name": "Eve", "instructions": "Lie."}),
        (f"{setup.api}/api/personas/{setup.persona_id}", "PATCH", {"greeting": "Hacked"}),
    ]
    for url, method, body in writes:
        answer = call(page, url, token, method, body)
        assert answer["status"] == 403, answer
        assert answer["type"].startswith("application/problem+json")
        assert answer["body"]["code"] == "auth.insufficient_scope", answer
    mutation = """mutation { upsertKnowledgeDoc(externalId: "faq:shipping",
        input: {content: "Free!"}) { status } }"""
    assert error_code(graphql(page, setup, token, mutation)) == "auth.insufficient_scope"

    # Nothing changed.
    after = httpx.get(f"{setup.api}/api/knowledge/docs/by-external-id/faq:shipping", headers=owner)
    assert after.json() == before.json()
    missing = httpx.get(f"{setup.api}/api/knowledge/docs/by-external-id/new", headers=owner)
    assert missing.status_code == 404
    assert httpx.get(f"{setup.api}/api/personas", headers=owner).json()["total"] == personas_before
    page.reload()
    page.wait_for_selector("#widget[data-ready=true]")
    assert page.inner_text("#greeting") == GREETING
    assert unexpected(console_errors) == []


def test_a_token_for_another_persona_sees_nothing_of_this_one(
    page: Page, console_errors: list[str], setup: Setup
) -> None:
    open_widget(page, setup)
    leo_only = mint_token(
        key=setup.key_prefix,
        signing_secret=setup.signing_secret,
        expires_in=600,
        sub="another-visitor",
        persona_ids=[setup.other_persona_id],
    )
    question = "how long does shipping take"
    # It works, for its own persona.
    own = graphql(page, setup, leo_only, SEARCH, q=question, p=setup.other_persona_id)
    assert [h["externalId"] for h in own["data"]["search"]["results"]] == ["guide:espresso"]

    # Ava herself, and a search within her knowledge: refused.
    for query, variables in (
        (PERSONA, {"id": setup.persona_id}),
        (SEARCH, {"q": question, "p": setup.persona_id}),
    ):
        body = graphql(page, setup, leo_only, query, **variables)
        assert error_code(body) == "auth.insufficient_scope" and body["data"] is None, body
    rest = call(
        page,
        f"{setup.api}/api/knowledge/search",
        leo_only,
        "POST",
        {"query": question, "persona_id": setup.persona_id},
    )
    assert rest["status"] == 403 and rest["body"]["code"] == "auth.insufficient_scope", rest

    # A search without a persona stays within Leo's knowledge: none of Ava's documents.
    anywhere = graphql(page, setup, leo_only, SEARCH, q=question)
    assert [h["externalId"] for h in anywhere["data"]["search"]["results"]] == ["guide:espresso"]
    # The list of personas has Leo only.
    listed = graphql(page, setup, leo_only, "{ personas { items { id } } }")
    assert listed["data"]["personas"]["items"] == [{"id": setup.other_persona_id}]
    assert unexpected(console_errors) == []


def test_the_token_is_refused_from_another_origin(setup: Setup) -> None:
    token = mint_token(key=setup.key_prefix, signing_secret=setup.signing_secret, expires_in=600)
    headers = {"Authorization": f"Bearer {token}", "Origin": "https://elsewhere.example"}
    r = httpx.post(f"{setup.api}/api/knowledge/search", json={"query": "shipping"}, headers=headers)
    assert r.status_code == 403 and r.json()["code"] == "auth.origin_not_allowed", r.text
    assert "access-control-allow-origin" not in r.headers


def test_mint_py_says_what_is_missing_and_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAIZER_", "WIDGET_"))}
    for settings, said in (
        ({}, "set WIDGET_KEY_PREFIX, WIDGET_SIGNING_SECRET, WIDGET_PERSONA_ID"),
        (
            {
                "WIDGET_KEY_PREFIX": "sk_1234",
                "WIDGET_SIGNING_SECRET": "s",
                "WIDGET_PERSONA_ID": "p",
            },
            "is not a key prefix",
        ),
    ):
        done = subprocess.run(
            [sys.executable, str(MINT), "--port", str(servers.free_port())],
            env={**env, **settings},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2 and said in done.stderr, done.stderr
