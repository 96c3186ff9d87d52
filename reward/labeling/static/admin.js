// The admin page: progress, speed and agreement per annotator, pairs to review, and the export (admin tokens only).
// Text from the database is only ever set with textContent.
"use strict";

(() => {
  const TOKEN_KEY = "labeling-token";  // shared with the labeling page: one sign-in per tab
  const $ = (id) => document.getElementById(id);

  async function api(path) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) }, cache: "no-store", credentials: "omit",
    });
    if (response.status === 401 || response.status === 403) {
      signOut(response.status === 401 ? "That token was not accepted." : "This page needs an admin token.");
      throw new Error("signed out");
    }
    if (!response.ok) throw new Error(`${path}: ${response.status}`);
    return response;
  }

  const number = (value, digits = 3) => (value === null || value === undefined ? "n/a" : value.toFixed(digits));

  function row(table, cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      tr.append(td);
    }
    $(table).querySelector("tbody").append(tr);
  }

  function clear(table) { $(table).querySelector("tbody").replaceChildren(); }

  function promptText(prompt) {
    const text = typeof prompt === "string" ? prompt : prompt.map((m) => `${m.role}: ${m.content}`).join(" / ");
    return text.length > 160 ? text.slice(0, 160) + "…" : text;
  }

  async function load() {
    const [stats, annotators, review] = await Promise.all(
      ["/api/stats", "/api/annotators", "/api/disagreements"].map(async (path) => (await api(path)).json()));
    $("pairs").textContent = stats.pairs;
    $("pairs-with-votes").textContent = stats.pairs_with_votes;
    $("overlap").textContent = stats.overlap;
    $("alpha").textContent = number(stats.krippendorff_alpha);
    clear("annotators");
    for (const a of annotators) {
      const agreement = stats.majority_agreement[a.name];
      row("annotators", [a.name, a.is_admin ? "admin" : "annotator", a.revoked ? "revoked" : "active", a.labeled,
        a.skipped, a.edits, number(a.median_seconds, 1),
        agreement ? `${number(agreement.agreement)} on ${agreement.pairs}` : "n/a"]);
    }
    clear("kappas");
    for (const k of stats.cohen_kappa) row("kappas", [k.annotators.join(" / "), number(k.kappa), k.shared_pairs]);
    clear("disagreements");
    for (const d of review) {
      row("disagreements", [d.pair_id, promptText(d.prompt),
        Object.entries(d.votes).map(([choice, n]) => `${choice} ${n}`).join(", ")]);
    }
  }

  async function download(query, name) {
    const blob = await (await api(`/api/export?${query}`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.click();
    URL.revokeObjectURL(link.href);
  }

  function exportPrefs() {
    const query = new URLSearchParams({
      min_votes: $("min-votes").value || "1",
      keep_ties: String($("keep-ties").checked),
      keep_both_bad: String($("keep-both-bad").checked),
    });
    download(query.toString(), "prefs.jsonl").catch(() => {});
  }

  function show(signedIn) {
    $("login-view").hidden = signedIn;
    $("admin-view").hidden = !signedIn;
    $("account").hidden = !signedIn;
  }

  function signOut(message = "") {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = message;
    show(false);
  }

  async function start() {
    const me = await (await api("/api/me")).json();
    if (!me.is_admin) {
      signOut("This page needs an admin token.");
      return;
    }
    $("who").textContent = me.name;
    await load();
    show(true);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("login-error").textContent = "";
      start().catch(() => {});
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("export-prefs").addEventListener("click", exportPrefs);
    $("export-raw").addEventListener("click", () => download("raw=true", "votes.jsonl").catch(() => {}));
    if (sessionStorage.getItem(TOKEN_KEY)) start().catch(() => {});
  });
})();
