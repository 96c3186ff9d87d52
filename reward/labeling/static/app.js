// The labeling page: sign in with a token, then label the pairs of your queue, keyboard first.
// Model text is only ever set with textContent, so markup in it shows as text and never runs.
"use strict";

(() => {
  const TOKEN_KEY = "labeling-token";
  const CHOICE_KEYS = { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
  const STRENGTH_KEYS = { q: "1", w: "2", e: "3" };
  const HISTORY_LIMIT = 100;  // how far back Backspace goes (the server's limit too)
  const $ = (id) => document.getElementById(id);
  // editing: the earlier label being changed (null for a new one); back: how many labels back it is
  const state = { pair: null, shownAt: 0, busy: false, guidelinesLoaded: false, editing: null, back: -1 };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- HTTP: the token travels only in the Authorization header ----

  function errorText(data, fallback) {
    if (!data || data.detail === undefined) return fallback;
    if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg).join("; ");
    return String(data.detail);
  }

  async function api(path, body, method = "POST") {
    const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
    const options = { headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.method = method;
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      signOut("That token was not accepted. Please sign in again.");
    }
    if (!response.ok) throw new ApiError(response.status, errorText(data, response.statusText));
    return data;
  }

  // ---- views ----

  function show(view) {
    for (const id of ["login-view", "task-view", "done-view"]) $(id).hidden = id !== view;
    const signedIn = view !== "login-view";
    $("account").hidden = !signedIn;
    $("progress").hidden = !signedIn;
  }

  let toastTimer = 0;
  function toast(message, isError = false) {
    const box = $("toast");
    box.textContent = message;
    box.classList.toggle("error", isError);
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, isError ? 5000 : 1800);
  }

  function showProgress(progress) {
    const total = progress.labeled + progress.skipped + progress.remaining;
    const done = progress.labeled + progress.skipped;
    let text = `${progress.labeled} labeled · ${progress.remaining} to go`;
    if (progress.skipped) text += ` · ${progress.skipped} skipped`;
    $("progress-text").textContent = text;
    $("progress-fill").style.width = total ? `${(100 * done) / total}%` : "0%";
  }

  // Bidi overrides and isolates, zero-width and other invisible format characters, and control characters
  // (but tab and newline) would change or hide what an annotator reads: each is shown as a visible ⟨U+XXXX⟩.
  const INVISIBLE = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\u00AD\u061C\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\uFEFF\uFFF9-\uFFFB]/g;

  function fillText(element, text) {
    element.replaceChildren();
    element.dir = "auto";
    let last = 0;
    for (const match of text.matchAll(INVISIBLE)) {
      element.append(text.slice(last, match.index));
      const mark = document.createElement("span");
      mark.className = "invisible-char";
      mark.textContent = `⟨U+${match[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`;
      element.append(mark);
      last = match.index + 1;
    }
    element.append(text.slice(last));
  }

  function textBlock(text, className = "text") {
    const div = document.createElement("div");
    div.className = className;
    fillText(div, text);
    return div;
  }

  function renderPrompt(prompt) {
    const box = $("prompt");
    box.replaceChildren();
    if (typeof prompt === "string") {
      box.append(textBlock(prompt));
      return;
    }
    for (const message of prompt) {
      const turn = document.createElement("div");
      turn.className = "message";
      turn.dataset.role = message.role;
      turn.append(textBlock(message.role, "role"), textBlock(message.content));
      box.append(turn);
    }
  }

  function showPair(pair, previous = null) {
    state.pair = pair;
    state.editing = previous;
    renderPrompt(pair.prompt);
    fillText($("left"), pair.left);
    fillText($("right"), pair.right);
    $("decision").reset();
    if (previous) {
      $(`choice-${previous.choice}`)?.click();
      if (previous.strength) $(`strength-${previous.strength}`).checked = true;
      $("reason").value = previous.reason;
      $("editing-text").textContent = `Changing your label ${state.back + 1} back`;
    }
    $("editing").hidden = !previous;
    if (document.activeElement instanceof HTMLElement) document.activeElement.blur();  // shortcuts work again
    updateDecision();
    show("task-view");
    window.scrollTo(0, 0);
    for (const id of ["prompt", "left", "right"]) $(id).scrollTop = 0;
    state.shownAt = performance.now();
  }

  // ---- the decision form ----

  function selected(name) {
    const input = document.querySelector(`input[name="${name}"]:checked`);
    return input ? input.value : null;
  }

  function updateDecision() {
    const choice = selected("choice");
    const preference = choice === "left" || choice === "right";
    $("strength").disabled = !preference;
    if (!preference) for (const input of document.querySelectorAll('input[name="strength"]')) input.checked = false;
    $("card-left").classList.toggle("chosen", choice === "left");
    $("card-right").classList.toggle("chosen", choice === "right");
    $("submit").disabled = choice === null;
  }

  function choose(choice) {
    $(`choice-${choice}`).checked = true;
    updateDecision();
  }

  function setStrength(value) {
    if ($("strength").disabled) {
      toast("Strength goes with A or B: pick one first (1 or 2).");
      return;
    }
    $(`strength-${value}`).checked = true;
  }

  async function sendLabel(label) {
    if (state.busy || !state.pair) return;
    state.busy = true;
    const timeMs = Math.round(performance.now() - state.shownAt);
    let moveOn = true;
    try {
      const result = state.editing
        ? await api(`/api/labels/${state.editing.label_id}`, { time_ms: timeMs, ...label }, "PUT")
        : await api("/api/labels", { pair_id: state.pair.id, time_ms: timeMs, ...label });
      showProgress(result.progress);
      toast(state.editing ? "Changed" : label.choice === "skip" ? "Skipped" : "Saved");
    } catch (error) {
      moveOn = error.status === 409;  // already labeled, or no longer assigned: go on to the next pair
      if (error.status !== 401) toast(moveOn ? error.message : `Could not save: ${error.message}`, true);
    }
    if (moveOn) await loadNext().catch((error) => toast(`Could not load the next pair: ${error.message}`, true));
    state.busy = false;
  }

  function submit() {
    const choice = selected("choice");
    if (!choice) {
      toast("Pick A, B, tie or both bad first (keys 1–4).");
      return;
    }
    const strength = selected("strength");
    sendLabel({ choice, strength: strength ? Number(strength) : null, reason: $("reason").value.trim() });
  }

  // ---- undo and edit: back through your recent labels, pre-filled ----

  async function goBack() {
    if (state.busy) return;
    state.busy = true;
    try {
      const labels = (await api(`/api/history?limit=${Math.min(state.back + 2, HISTORY_LIMIT)}`)).labels;
      if (labels.length > state.back + 1) {
        state.back += 1;
        showPair(labels[state.back], labels[state.back]);
      } else {
        toast(state.back < 0 ? "Nothing to go back to yet." : "That is as far back as it goes.");
      }
    } catch (error) {
      if (error.status !== 401) toast(`Could not go back: ${error.message}`, true);
    }
    state.busy = false;
  }

  function returnToQueue() {
    state.back = -1;
    loadNext().catch((error) => toast(`Could not load the next pair: ${error.message}`, true));
  }

  // ---- skipping ----

  function openSkip() {
    if (!state.pair || state.editing) return;
    $("skip-form").reset();
    $("skip-dialog").showModal();
    $("skip-reason").focus();
  }

  function confirmSkip(event) {
    event.preventDefault();
    const details = $("skip-details").value.trim();
    const reason = $("skip-reason").value + (details ? `: ${details}` : "");
    $("skip-dialog").close();
    sendLabel({ choice: "skip", strength: null, reason });
  }

  // ---- guidelines: a small, safe markdown subset built with DOM nodes ----

  function appendInline(parent, text) {
    const url = String.raw`(?:[^()\s]|\([^()\s]*\))+`;  // may hold balanced parentheses, as Wikipedia links do
    const pattern = new RegExp(String.raw`(\*\*[^*]+\*\*|` + "`[^`]+`" + String.raw`|\*[^*\s][^*]*\*|\[[^\]]+\]\(${url}\))`, "g");
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      parent.append(text.slice(last, match.index));
      const token = match[0];
      let node;
      if (token.startsWith("**")) {
        node = document.createElement("strong");
        node.textContent = token.slice(2, -2);
      } else if (token.startsWith("`")) {
        node = document.createElement("code");
        node.textContent = token.slice(1, -1);
      } else if (token.startsWith("[")) {
        const [, label, href] = token.match(new RegExp(String.raw`^\[([^\]]+)\]\((${url})\)$`));
        node = document.createElement(/^https?:\/\//.test(href) ? "a" : "span");
        node.textContent = label;
        if (node.tagName === "A") {
          node.href = href;
          node.rel = "noopener noreferrer";
          node.target = "_blank";
        }
      } else {
        node = document.createElement("em");
        node.textContent = token.slice(1, -1);
      }
      parent.append(node);
      last = match.index + token.length;
    }
    parent.append(text.slice(last));
  }

  function renderMarkdown(markdown, container) {
    container.replaceChildren();
    let paragraph = null;
    let list = null;
    let code = null;
    const close = () => { paragraph = null; list = null; };
    for (const line of markdown.split(/\r?\n/)) {
      if (code) {
        if (line.trim().startsWith("```")) code = null;
        else code.textContent += line + "\n";
        continue;
      }
      if (line.trim().startsWith("```")) {
        close();
        const pre = document.createElement("pre");
        code = document.createElement("code");
        pre.append(code);
        container.append(pre);
        continue;
      }
      const heading = line.match(/^(#{1,4})\s+(.*)$/);
      const item = line.match(/^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/);
      if (!line.trim()) {
        close();
      } else if (heading) {
        close();
        const h = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`);
        appendInline(h, heading[2]);
        container.append(h);
      } else if (item) {
        const tag = item[1] ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== tag) {
          close();
          list = document.createElement(tag);
          container.append(list);
        }
        const li = document.createElement("li");
        appendInline(li, item[3]);
        list.append(li);
      } else if (list && /^\s{2,}/.test(line)) {
        appendInline(list.lastElementChild, " " + line.trim());
      } else {
        if (!paragraph) {
          close();
          paragraph = document.createElement(line.startsWith(">") ? "blockquote" : "p");
          container.append(paragraph);
        } else {
          paragraph.append(" ");
        }
        appendInline(paragraph, line.replace(/^>\s?/, ""));
      }
    }
  }

  async function toggleGuidelines(open = $("guidelines").hidden) {
    if (open && !state.guidelinesLoaded) {
      try {
        renderMarkdown((await api("/api/guidelines")).markdown, $("guidelines-body"));
        state.guidelinesLoaded = true;
      } catch (error) {
        if (error.status !== 401) toast(`Could not load the guidelines: ${error.message}`, true);
        return;
      }
    }
    $("guidelines").hidden = !open;
    $("guidelines-button").setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("with-drawer", open);
  }

  // ---- session ----

  async function loadNext() {
    state.back = -1;
    state.editing = null;
    const data = await api("/api/next");
    showProgress(data.progress);
    if (data.pair) {
      showPair(data.pair);
    } else {
      state.pair = null;
      show("done-view");
    }
  }

  async function start() {
    const me = await api("/api/me");
    $("who").textContent = me.name;
    showProgress(me.progress);
    await loadNext();
  }

  function signOut(message = "") {
    sessionStorage.removeItem(TOKEN_KEY);
    state.pair = null;
    state.guidelinesLoaded = false;
    $("guidelines").hidden = true;
    document.body.classList.remove("with-drawer");
    $("login-error").textContent = message;
    $("login-form").reset();
    show("login-view");
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-error").textContent = "";
    try {
      await start();
    } catch (error) {
      if (error.status !== 401) $("login-error").textContent = `Could not sign in: ${error.message}`;
    }
  }

  // ---- keyboard ----

  function onKey(event) {
    const target = event.target;
    const inField = target.matches("input[type=text], input[type=password], textarea, select");
    const undo = (event.key === "Backspace" && !event.ctrlKey && !event.metaKey && !event.altKey)
      || ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z" && !event.shiftKey);
    const labeling = !$("task-view").hidden || !$("done-view").hidden;
    if (undo && !inField && !$("skip-dialog").open && labeling) {
      event.preventDefault();
      goBack();
      return;
    }
    if (event.key === "Escape" && state.editing && !inField && $("guidelines").hidden) {
      event.preventDefault();
      returnToQueue();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || $("skip-dialog").open) return;
    if (inField) {
      if (event.key === "Escape") target.blur();
      return;
    }
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if ($("account").hidden) return;
    if (key === "g" || key === "?") {
      toggleGuidelines();
    } else if (key === "Escape" && !$("guidelines").hidden) {
      toggleGuidelines(false);
    } else if ($("task-view").hidden) {
      return;
    } else if (CHOICE_KEYS[key]) {
      choose(CHOICE_KEYS[key]);
    } else if (STRENGTH_KEYS[key]) {
      setStrength(STRENGTH_KEYS[key]);
    } else if (key === "s") {
      openSkip();
    } else if (key === "r") {
      $("reason").focus();
    } else if (key === "Enter" && !target.matches("button, a")) {
      submit();
    } else {
      return;
    }
    event.preventDefault();
  }

  // ---- wiring ----

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut());
    $("decision").addEventListener("change", updateDecision);
    $("decision").addEventListener("submit", (event) => { event.preventDefault(); submit(); });
    $("skip").addEventListener("click", openSkip);
    $("skip-form").addEventListener("submit", confirmSkip);
    $("skip-reason").addEventListener("keydown", (event) => { if (event.key === "Enter") confirmSkip(event); });
    $("skip-cancel").addEventListener("click", () => $("skip-dialog").close());
    $("guidelines-button").addEventListener("click", () => toggleGuidelines());
    $("guidelines-close").addEventListener("click", () => toggleGuidelines(false));
    $("check-again").addEventListener("click", () => loadNext().catch((e) => toast(e.message, true)));
    $("back").addEventListener("click", goBack);
    $("done-back").addEventListener("click", goBack);
    $("editing-cancel").addEventListener("click", returnToQueue);
    document.addEventListener("keydown", onKey);
    if (sessionStorage.getItem(TOKEN_KEY)) {
      start().catch((error) => { if (error.status !== 401) toast(error.message, true); });
    } else {
      signOut();
    }
  });
})();
