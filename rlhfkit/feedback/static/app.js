// rlhfkit annotation page. Plain JS, no build step.
// Safety rule: model text (prompts, responses, rubric, names) is only ever set with textContent, never innerHTML, so
// a response such as <img src=x onerror=...> is shown as literal text. The server's CSP forbids inline script too.
(function () {
  "use strict";

  const TOKEN_KEY = "rlhfkit.annotate.token";
  const STRENGTH_NAMES = { 2: ["slightly", "much"], 3: ["slightly", "clearly", "much"] };
  const $ = (id) => document.getElementById(id);

  const state = {
    campaign: null, // campaign summary from /api/me
    item: null, // the assignment view being labelled
    choice: null, // "A" | "B" | "tie"
    strength: null,
    dims: {},
    order: [], // ranking: displayed positions, best first
    shownAt: 0,
    busy: false,
    kept: false, // the server kept an earlier answer to this item: the next Enter moves on
  };

  // ---------------------------------------------------------------- helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function show(view) {
    for (const id of ["login-view", "campaigns-view", "label-view", "done-view"]) $(id).hidden = id !== view;
    $("logout").hidden = view === "login-view";
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, message, data) {
      super(message);
      this.status = status;
      this.data = data;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (res.status === 401) {
      logout("Your token was not accepted; log in again.");
      throw new ApiError(401, "not logged in");
    }
    if (!res.ok) {
      const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : res.statusText;
      throw new ApiError(res.status, detail, data);
    }
    return data;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.className = isError ? "error" : "muted";
  }

  // ---------------------------------------------------------------- login / campaigns

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.campaign = null;
    state.item = null;
    $("whoami").textContent = "";
    $("token").value = "";
    $("login-error").textContent = message || "";
    show("login-view");
    $("token").focus();
  }

  async function loadCampaigns(autoOpen) {
    const me = await api("GET", "/api/me");
    $("whoami").textContent = "rater: " + me.rater;
    const list = $("campaign-list");
    list.replaceChildren();
    for (const c of me.campaigns) {
      const li = el("li");
      const b = el("button", "campaign", c.name + "  (" + c.progress.done + " / " + c.progress.total + ")");
      b.type = "button";
      b.dataset.campaign = c.name;
      b.addEventListener("click", () => openCampaign(c));
      li.appendChild(b);
      list.appendChild(li);
    }
    $("no-campaigns").hidden = me.campaigns.length > 0;
    show("campaigns-view");
    if (autoOpen && me.campaigns.length === 1) await openCampaign(me.campaigns[0]);
  }

  async function login(event) {
    event.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("login-error").textContent = "";
    try {
      await loadCampaigns(true);
    } catch (e) {
      if (e.status !== 401) $("login-error").textContent = "Could not log in: " + e.message;
    }
  }

  // ---------------------------------------------------------------- labelling

  async function openCampaign(c) {
    state.campaign = c;
    $("campaign-name").textContent = c.name;
    await loadNext();
  }

  function setProgress(p) {
    $("progress-text").textContent = p.done + " / " + p.total + " done";
    $("progress-bar").max = Math.max(1, p.total);
    $("progress-bar").value = p.done;
  }

  async function loadNext() {
    const data = await api("GET", "/api/campaigns/" + encodeURIComponent(state.campaign.name) + "/next");
    setProgress(data.progress);
    if (data.done) {
      state.item = null;
      $("done-text").textContent =
        "You have labelled all " + data.progress.total + " items of " + state.campaign.name + ". Thank you!";
      show("done-view");
      return;
    }
    renderItem(data.assignment);
  }

  function renderPrompt(prompt) {
    const box = $("prompt");
    box.replaceChildren();
    const messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
    for (const m of messages) {
      const div = el("div", "message");
      div.appendChild(el("span", "role", m.role));
      div.appendChild(el("div", "message-text", m.content));
      box.appendChild(div);
    }
  }

  function renderItem(item) {
    state.item = item;
    state.kept = false;
    $("submit").textContent = "Submit ";
    $("submit").appendChild(el("kbd", null, "Enter"));
    state.choice = null;
    state.strength = item.strength_scale > 1 ? Math.ceil(item.strength_scale / 2) : 1;
    state.dims = {};
    state.order = [];
    state.shownAt = performance.now();
    $("rubric").textContent = item.rubric || "";
    $("rubric-box").hidden = !item.rubric;
    renderPrompt(item.prompt);
    const pairwise = item.kind === "pairwise";
    $("pairwise-controls").hidden = !pairwise;
    $("ranking-controls").hidden = pairwise;
    $("pairwise-keys").hidden = !pairwise;
    const box = $("responses");
    box.replaceChildren();
    item.responses.forEach((text, i) => {
      const name = pairwise ? "AB"[i] : String(i + 1);
      const card = el("div", "response");
      card.id = "response-" + name;
      card.dataset.position = String(i);
      const head = el("div", "response-head", "Response " + name);
      if (!pairwise) {
        head.appendChild(el("span", "rank-badge"));
        card.classList.add("clickable");
        card.addEventListener("click", () => rankPick(i));
      }
      card.appendChild(head);
      card.appendChild(el("div", "response-text", text));
      box.appendChild(card);
    });
    if (pairwise) renderPairwiseControls(item);
    $("reason").value = "";
    setStatus("");
    if (item.label) setStatus("You already labelled this item.");
    show("label-view");
    refresh();
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  }

  function radio(name, value, text, checked, onChange) {
    const label = el("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = name;
    input.value = value;
    input.checked = checked;
    input.addEventListener("change", onChange);
    label.appendChild(input);
    label.appendChild(document.createTextNode(" " + text));
    return label;
  }

  function renderPairwiseControls(item) {
    const s = $("strength");
    s.replaceChildren();
    const names = STRENGTH_NAMES[item.strength_scale] || [];
    for (let v = 1; v <= item.strength_scale; v++) {
      const text = names.length ? v + " " + names[v - 1] : String(v);
      s.appendChild(radio("strength", String(v), text, v === state.strength, () => setStrength(v)));
    }
    $("strength-box").hidden = item.strength_scale <= 1;
    const d = $("dimensions");
    d.replaceChildren();
    for (const dim of item.dimensions) {
      const row = el("div", "dimension");
      row.dataset.dimension = dim;
      row.appendChild(el("span", "dim-name", dim));
      for (const [value, text] of [["A", "A"], ["tie", "tie"], ["B", "B"]]) {
        row.appendChild(radio("dim-" + dim, value, text, false, () => {
          state.dims[dim] = value;
          refresh();
        }));
      }
      d.appendChild(row);
    }
  }

  function setChoice(choice) {
    if (!state.item || state.kept || state.item.kind !== "pairwise") return;
    state.choice = choice;
    refresh();
  }

  function setStrength(v) {
    if (state.kept) return;
    const max = state.item.strength_scale;
    state.strength = Math.min(max, Math.max(1, v));
    for (const input of document.querySelectorAll('input[name="strength"]')) input.checked = input.value === String(state.strength);
    refresh();
  }

  function rankPick(position) {
    if (!state.item || state.kept || state.item.kind !== "ranking" || state.order.includes(position)) return;
    state.order.push(position);
    refresh();
  }

  function ready() {
    const item = state.item;
    if (!item) return false;
    if (item.kind === "ranking") return state.order.length === item.responses.length;
    return state.choice !== null && item.dimensions.every((d) => state.dims[d] !== undefined);
  }

  function refresh() {
    const item = state.item;
    if (!item) return;
    if (item.kind === "pairwise") {
      for (const b of document.querySelectorAll(".choice")) b.classList.toggle("selected", b.dataset.choice === state.choice);
      $("response-A").classList.toggle("selected", state.choice === "A");
      $("response-B").classList.toggle("selected", state.choice === "B");
      $("strength-box").disabled = state.choice === "tie";
    } else {
      const names = state.order.map((p) => String(p + 1));
      $("rank-order").textContent = names.length ? names.join(" > ") : "(none yet)";
      for (const card of document.querySelectorAll(".response")) {
        const rank = state.order.indexOf(Number(card.dataset.position));
        card.classList.toggle("selected", rank >= 0);
        card.querySelector(".rank-badge").textContent = rank >= 0 ? "#" + (rank + 1) : "";
      }
    }
    $("submit").disabled = state.kept ? state.busy : !ready() || state.busy;
  }

  function describe(label, item) {
    if (!label) return "";
    if (item.kind === "ranking") return "order " + (label.order || []).map((p) => String(p + 1)).join(" > ");
    let text = label.choice === "tie" ? "tie" : label.choice + " is better";
    if (label.choice !== "tie" && item.strength_scale > 1 && label.strength) text += " (strength " + label.strength + ")";
    for (const [dim, value] of Object.entries(label.dimensions || {})) text += ", " + dim + ": " + value;
    return text;
  }

  function showKept(label) {
    // the server keeps the first saved answer (labels are final): say so, show it, and let Enter move on
    const item = state.item;
    state.kept = true;
    if (item.kind === "ranking") {
      state.order = (label && label.order) || [];
    } else if (label) {
      state.choice = label.choice;
      if (label.strength) state.strength = label.strength;
      state.dims = Object.assign({}, label.dimensions || {});
      for (const input of document.querySelectorAll('input[name="strength"]')) input.checked = input.value === String(state.strength);
      for (const [dim, value] of Object.entries(state.dims)) {
        for (const input of document.querySelectorAll('input[name="dim-' + CSS.escape(dim) + '"]')) input.checked = input.value === value;
      }
    }
    $("reason").value = (label && label.reason) || "";
    $("submit").textContent = "Next item ";
    $("submit").appendChild(el("kbd", null, "Enter"));
    setStatus(
      "Not changed: you had already answered this item (" + describe(label, item) + "). A saved answer cannot be " +
        "changed, so your earlier answer stands. Press Enter for the next item.",
      true
    );
    refresh();
  }

  async function submit() {
    if (state.kept && !state.busy) {
      await loadNext();
      return;
    }
    if (!ready() || state.busy) return;
    const item = state.item;
    const body = { reason: $("reason").value.trim(), seconds: Math.round(performance.now() - state.shownAt) / 1000 };
    if (item.kind === "ranking") {
      body.order = state.order.slice();
    } else {
      body.choice = state.choice;
      if (state.choice !== "tie") body.strength = state.strength;
      if (item.dimensions.length) body.dimensions = Object.assign({}, state.dims);
    }
    state.busy = true;
    refresh();
    setStatus("Saving…");
    try {
      // idempotent on the server: re-sending after a network error never stores a second label
      await api("POST", "/api/assignments/" + item.id + "/label", body);
      state.busy = false;
      await loadNext();
    } catch (e) {
      state.busy = false;
      if (e.status === 409 && e.data && e.data.label) {
        showKept(e.data.label);
        return;
      }
      refresh();
      if (e.status !== 401) setStatus("Not saved: " + e.message + ". Press Enter to try again.", true);
    }
  }

  // ---------------------------------------------------------------- keyboard

  function onKey(event) {
    if ($("label-view").hidden || !state.item) return;
    const target = event.target;
    const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "radio"));
    if (event.key === "Enter") {
      if (typing && !(event.ctrlKey || event.metaKey)) return;
      event.preventDefault();
      submit();
      return;
    }
    if (state.kept || typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && target.type === "radio" && event.key.startsWith("Arrow")) return; // native radio navigation
    const key = event.key.toLowerCase();
    if (state.item.kind === "pairwise") {
      const map = { 1: "A", a: "A", 2: "B", b: "B", 0: "tie", t: "tie" };
      if (key in map) {
        event.preventDefault();
        setChoice(map[key]);
      } else if (event.key === "ArrowUp" || event.key === "ArrowRight" || event.key === "+") {
        event.preventDefault();
        setStrength(state.strength + 1);
      } else if (event.key === "ArrowDown" || event.key === "ArrowLeft" || event.key === "-") {
        event.preventDefault();
        setStrength(state.strength - 1);
      }
    } else {
      const n = Number(event.key);
      if (Number.isInteger(n) && n >= 1 && n <= state.item.responses.length) {
        event.preventDefault();
        rankPick(n - 1);
      } else if (event.key === "Backspace") {
        event.preventDefault();
        state.order.pop();
        refresh();
      }
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout(""));
    $("back").addEventListener("click", () => loadCampaigns(false));
    $("done-back").addEventListener("click", () => loadCampaigns(false));
    $("submit").addEventListener("click", submit);
    $("rank-reset").addEventListener("click", () => {
      state.order = [];
      refresh();
    });
    for (const b of document.querySelectorAll(".choice")) b.addEventListener("click", () => setChoice(b.dataset.choice));
    document.addEventListener("keydown", onKey);
    if (token()) {
      // a reload keeps the session: resume where the rater left off
      loadCampaigns(true).catch((e) => {
        if (e.status !== 401) logout("Could not reach the server: " + e.message);
      });
    } else {
      show("login-view");
    }
  }

  init();
})();
