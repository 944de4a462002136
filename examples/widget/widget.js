// The widget: a persona's greeting, and a search of its knowledge as the visitor types.
//
// The page holds no key. It asks its own backend (mint.py, POST /token) for a short tenant
// token for one persona, and sends it to the PersonAIzer GraphQL API on another origin; the
// key behind the token lists this page's origin, so the API answers the browser's CORS checks.
// Every text that comes from the API is put in with textContent, never parsed as HTML.
"use strict";

(() => {
  /** Wait this long after the last keystroke before searching. */
  const DEBOUNCE_MS = 250;
  /** Ask for a new token this long before the current one expires. */
  const RENEW_EARLY_S = 30;
  const HITS = 5;
  /** Leave out hits scored below this: they are most likely unrelated to the question. The
   *  API guide suggests 0.4; a lower bar keeps a one-word question ("shipping") answered. */
  const MIN_SCORE = 0.3;
  const SNIPPET_CHARS = 240;

  const PERSONA_QUERY = `query Persona($id: ID!) {
    persona(id: $id) { name description greeting }
  }`;
  const SEARCH_QUERY = `query Search($query: String!, $personaId: ID!, $k: Int!, $minScore: Float) {
    search(query: $query, personaId: $personaId, k: $k, minScore: $minScore) {
      results { externalId title score text }
    }
  }`;

  const $ = (id) => document.getElementById(id);
  const widget = $("widget");
  const nameEl = $("persona-name");
  const greetingEl = $("greeting");
  const input = $("question");
  const statusEl = $("status");
  const resultsEl = $("results");

  /** {token, expires_at, api_url, persona_id} from the backend; null until asked. */
  let session = null;
  let sessionPromise = null;
  /** The persona this page is for, as the backend says. */
  let personaId = null;
  /** Each search gets the next number; only the answer to the latest one is shown. */
  let latest = 0;
  let timer = 0;

  class ApiError extends Error {
    constructor(message, code) {
      super(message);
      this.code = code;
    }
  }

  function renewSession() {
    // One request for a token at a time, however many searches are waiting for it.
    if (sessionPromise === null) {
      sessionPromise = fetch("/token", { method: "POST", credentials: "same-origin" })
        .then(async (response) => {
          if (!response.ok) {
            throw new ApiError(`The page could not get a token (HTTP ${response.status}).`);
          }
          session = await response.json();
          return session;
        })
        .finally(() => {
          sessionPromise = null;
        });
    }
    return sessionPromise;
  }

  async function currentSession() {
    const now = Date.now() / 1000;
    if (session === null || session.expires_at - RENEW_EARLY_S <= now) {
      return renewSession();
    }
    return session;
  }

  async function graphql(query, variables, renewed = false) {
    const { api_url: apiUrl, token } = await currentSession();
    const response = await fetch(`${apiUrl}/graphql`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, variables }),
    });
    if (response.status === 401 && !renewed) {
      // Expired (or its key was rotated): one fresh token, one more try.
      session = null;
      return graphql(query, variables, true);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      throw new ApiError(`The search service answered HTTP ${response.status}.`);
    }
    const error = body.errors && body.errors[0];
    if (error) {
      const code = error.extensions && error.extensions.code;
      throw new ApiError(error.message || `HTTP ${response.status}`, code);
    }
    if (!response.ok || !body.data) {
      throw new ApiError(`The search service answered HTTP ${response.status}.`);
    }
    return body.data;
  }

  function setStatus(text, isError = false) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", isError);
  }

  function renderHits(hits, question) {
    const items = hits.map((hit) => {
      const li = document.createElement("li");
      li.className = "hit";
      li.dataset.externalId = hit.externalId;

      const head = document.createElement("div");
      head.className = "hit-head";
      const title = document.createElement("h2");
      title.className = "hit-title";
      title.textContent = hit.title || hit.externalId;
      const score = document.createElement("span");
      score.className = "score";
      score.title = "Relevance, 0 to 1";
      score.dataset.score = String(hit.score);
      score.textContent = hit.score.toFixed(2);
      head.append(title, score);

      const snippet = document.createElement("p");
      snippet.className = "snippet";
      snippet.textContent =
        hit.text.length > SNIPPET_CHARS ? `${hit.text.slice(0, SNIPPET_CHARS)}…` : hit.text;

      li.append(head, snippet);
      return li;
    });
    resultsEl.replaceChildren(...items);
    resultsEl.dataset.query = question;
    setStatus(hits.length === 0 ? "Nothing found." : `${hits.length} found.`);
  }

  async function search(question) {
    const seq = ++latest;
    if (question === "") {
      resultsEl.replaceChildren();
      delete resultsEl.dataset.query;
      setStatus("");
      return;
    }
    setStatus("Searching…");
    try {
      const data = await graphql(SEARCH_QUERY, {
        query: question,
        personaId,
        k: HITS,
        minScore: MIN_SCORE,
      });
      if (seq === latest) renderHits(data.search.results, question);
    } catch (error) {
      if (seq === latest) setStatus(error.message, true);
    }
  }

  function scheduleSearch() {
    clearTimeout(timer);
    timer = setTimeout(() => search(input.value.trim()), DEBOUNCE_MS);
  }

  async function start() {
    try {
      ({ persona_id: personaId } = await currentSession());
      const { persona } = await graphql(PERSONA_QUERY, { id: personaId });
      if (persona === null) throw new ApiError("This assistant does not exist.");
      nameEl.textContent = persona.name;
      greetingEl.textContent = persona.greeting || persona.description || "Ask me anything.";
      input.disabled = false;
      input.addEventListener("input", scheduleSearch);
      $("ask").addEventListener("submit", (event) => {
        event.preventDefault();
        clearTimeout(timer);
        search(input.value.trim());
      });
      widget.dataset.ready = "true";
    } catch (error) {
      nameEl.textContent = "Unavailable";
      setStatus(error.message, true);
    } finally {
      widget.setAttribute("aria-busy", "false");
    }
  }

  start();
})();
