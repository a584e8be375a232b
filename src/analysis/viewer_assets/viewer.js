"use strict";
/* The token viewer's page: filters, sorting, on-demand data files, token shading and the token tooltip.

   Data (written by python -m analysis.viewer): window.BLENDIN_VIEWER from data/index.js (runs grouped by
   pair, benchmark and setting, with one summary per item), and per run small files data/<run>-<chunk>.js
   that call BLENDIN_VIEWER_CHUNK(key, data) once added as <script>: browsers refuse fetch() on file://.
   A sample's trace `tok` holds parallel lists, one entry per step: p piece of output text (null: past
   the output), u base top-1 prob, b base top id, c consulted, ap applied, a alpha, bp blend prob,
   s source (0 base, 1 guidance, 2 blend), ch chosen id, o override, g guidance top id (base ids),
   gp its prob, pg the base's prob of it, r its rank in the base, sp spelled through the base tokenizer. */
(function () {
  const INDEX = window.BLENDIN_VIEWER;
  const RUNS = INDEX.runs;
  const GROUPS = INDEX.groups;
  const chunks = {};
  const pending = {};
  window.BLENDIN_VIEWER_CHUNK = function (key, data) {
    chunks[key] = data;
  };

  const $ = (id) => document.getElementById(id);
  // shown: "run|sample" -> {t, vocab, stop} of what is on screen; pick: "run|sample" -> which sampled output
  const state = { page: 0, shown: {}, pick: {} };

  // ---- colours: Okabe-Ito blue for the base, orange for the guidance (safe for colour-blind readers)
  const BLUE = [0, 114, 178];
  const ORANGE = [230, 159, 0];
  const tint = (rgb, strength) => "rgb(" + rgb.map((v) => Math.round(255 + (v - 255) * strength)).join(",") + ")";
  const shade = (w) => (w > 0 ? tint(ORANGE, 0.2 + 0.6 * w) : tint(BLUE, 0.22));
  const stripShade = (w) => (w > 0 ? tint(ORANGE, 0.35 + 0.65 * w) : tint(BLUE, 0.18));
  const CONSULTED_GREY = "#7a7a7a";

  /** The guidance's weight in step i's token: 0 the base's, 1 the guidance's, alpha for a blend. */
  function weight(t, i) {
    if (t.s[i] === 1) return 1;
    if (t.s[i] === 2) return t.a[i] == null ? 0.5 : t.a[i];
    return 0;
  }

  const esc = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const fmt = (x, d = 3) => (x == null ? "n/a" : Number(x).toFixed(d));
  const pct = (x) => (x == null ? "n/a" : (100 * x).toFixed(0) + "%");

  /** A token id as text: its decoded string in quotes (spaces and newlines visible) and its id. */
  function tokenName(vocab, id) {
    if (id == null || id < 0) return null;
    const text = vocab ? vocab[id] : undefined;
    return text !== undefined ? JSON.stringify(text) + " (id " + id + ")" : "id " + id;
  }

  // ---- loading data files on demand
  function loadChunk(key) {
    if (chunks[key]) return Promise.resolve(chunks[key]);
    if (!pending[key]) {
      pending[key] = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = "data/" + key + ".js";
        script.onload = () => (chunks[key] ? resolve(chunks[key]) : reject(new Error("data/" + key + ".js is empty")));
        script.onerror = () => {
          delete pending[key];
          reject(new Error("could not read data/" + key + ".js (was the viewer folder moved in part?)"));
        };
        document.head.appendChild(script);
      });
    }
    return pending[key];
  }

  // ---- controls
  function options(select, items, keep) {
    const old = select.value;
    select.innerHTML = items.map(([v, label]) => '<option value="' + esc(v) + '">' + esc(label) + "</option>").join("");
    if (keep && items.some(([v]) => String(v) === old)) select.value = old;
  }
  const runTitle = (k) => RUNS[k].label + (RUNS[k].params && RUNS[k].params !== "-" ? " (" + RUNS[k].params + ")" : "");

  function group() {
    return GROUPS[Number($("f-setting").value)];
  }

  function fillBenchmarks() {
    const seen = new Map();
    GROUPS.forEach((g) => seen.set(g.benchmark, g.benchmark_label));
    options($("f-benchmark"), [...seen], true);
    fillPairs();
  }

  function fillPairs() {
    const seen = new Map();
    GROUPS.filter((g) => g.benchmark === $("f-benchmark").value).forEach((g) => seen.set(g.pair, g.pair_label));
    options($("f-pair"), [...seen], true);
    fillSettings();
  }

  function fillSettings() {
    const items = [];
    GROUPS.forEach((g, i) => {
      if (g.benchmark === $("f-benchmark").value && g.pair === $("f-pair").value) items.push([i, g.setting]);
    });
    options($("f-setting"), items, false);
    $("setting-label").hidden = items.length < 2;
    fillMethods();
  }

  function fillMethods() {
    const g = group();
    const wanted = ["base", "nudging", "blendin"];
    let shown = wanted.map((m) => g.runs.find((k) => RUNS[k].method === m)).filter((k) => k !== undefined);
    if (shown.length < 2) shown = g.runs.slice(0, 3);
    const box = $("f-methods");
    box.querySelectorAll("label").forEach((el) => el.remove());
    g.runs.forEach((k) => {
      const label = document.createElement("label");
      label.innerHTML =
        '<input type="checkbox" value="' + k + '"' + (shown.includes(k) ? " checked" : "") + "> " + esc(runTitle(k));
      box.appendChild(label);
    });
    const runs = g.runs.map((k) => [k, runTitle(k)]);
    options($("f-ref"), runs, false);
    options($("f-a"), runs, false);
    options($("f-b"), runs, false);
    const find = (...methods) => methods.map((m) => g.runs.find((k) => RUNS[k].method === m)).find((k) => k !== undefined);
    const ref = find("blendin", "nudging") ?? g.runs[0];
    $("f-ref").value = ref;
    $("f-a").value = find("blendin", "nudging") ?? g.runs[0];
    $("f-b").value = find("nudging", "base") ?? g.runs[Math.min(1, g.runs.length - 1)];
    changed();
  }

  function visibleRuns() {
    return [...$("f-methods").querySelectorAll("input:checked")].map((el) => Number(el.value));
  }

  // ---- which items, in which order
  function items() {
    const g = group();
    const runs = visibleRuns();
    const ref = RUNS[Number($("f-ref").value)];
    const outcome = $("f-outcome").value;
    const lo = Number($("f-rate-min").value || 0);
    const hi = $("f-rate-max").value === "" ? 1 : Number($("f-rate-max").value);
    let list = g.ids.map((_, j) => j).filter((j) => runs.some((k) => RUNS[k].chunk[j] != null));
    if (outcome !== "any") {
      list = list.filter((j) => {
        const s = ref.score[j];
        return s != null && (s >= g.correct_at) === (outcome === "correct");
      });
    }
    if (lo > 0 || hi < 1) list = list.filter((j) => ref.rate[j] != null && ref.rate[j] >= lo && ref.rate[j] <= hi);
    const failure = $("f-failure").value; // the failure detectors' flags of the run's output (blendin.failures)
    if (failure !== "any") {
      list = list.filter((j) => {
        const flags = (ref.fail || [])[j] || [];
        return failure === "none" ? ref.fail != null && flags.length === 0 : flags.includes(failure);
      });
    }
    const sort = $("f-sort").value;
    const A = RUNS[Number($("f-a").value)];
    const B = RUNS[Number($("f-b").value)];
    const diff = (field) => (j) => (A[field][j] == null || B[field][j] == null ? null : A[field][j] - B[field][j]);
    const key = {
      "rate-desc": (j) => ref.rate[j],
      "rate-asc": (j) => (ref.rate[j] == null ? null : -ref.rate[j]),
      "score-diff": diff("score"),
      "rate-diff": diff("rate"),
    }[sort];
    if (key) {
      // high first, items without a value last, ties in item order
      const value = new Map(list.map((j) => [j, key(j)]));
      list.sort((x, y) => {
        const a = value.get(x);
        const b = value.get(y);
        if (a == null || b == null) return (a == null) - (b == null) || x - y;
        return b - a || x - y;
      });
    }
    return list;
  }

  // ---- rendering
  function tokensHtml(t, vocab, stop) {
    const n = t.s.length;
    const parts = [];
    for (let i = 0; i < n; i++) {
      const cls = ["tok"];
      let text = t.p[i];
      if (!t.has_offsets) {
        text = vocab && vocab[t.ch[i]] !== undefined ? vocab[t.ch[i]] : "#" + t.ch[i] + " ";
        cls.push("idtok");
      } else if (text === null) {
        cls.push("cut");
        text = vocab && vocab[t.ch[i]] !== undefined ? vocab[t.ch[i]] : "";
      } else if (text === "") {
        cls.push(i === n - 1 && stop === "eos" ? "eos" : "empty");
      }
      if (t.c[i] && !t.o[i]) cls.push("kept");
      if (text.includes("\n")) cls.push("nl");
      const unsure = t.u[i] == null ? 0 : Math.max(0, 1 - t.u[i]);
      parts.push(
        '<span class="' + cls.join(" ") + '" tabindex="' + (i === 0 ? 0 : -1) + '" data-i="' + i + '" style="background:' +
          shade(weight(t, i)) + ";--unsure:" + (0.5 + 5.5 * unsure).toFixed(1) + "px;--ua:" + (unsure > 0.05 ? 1 : 0) +
          '">' + esc(text) + "</span>"
      );
    }
    if (t.tail) parts.push('<span class="untraced" title="text after the last traced step">' + esc(t.tail) + "</span>");
    return parts.join("");
  }

  function stripSvg(t) {
    const n = t.s.length;
    if (!n) return "";
    let rects = "";
    let acted = 0;
    let consulted = 0;
    for (let i = 0; i < n; i++) {
      const w = weight(t, i);
      acted += w > 0;
      consulted += t.c[i];
      const fill = w > 0 ? stripShade(w) : t.c[i] ? CONSULTED_GREY : stripShade(0);
      rects += '<rect x="' + i + '" y="0" width="1" height="1" fill="' + fill + '"/>';
    }
    const label = "guidance acted at " + acted + " of " + n + " steps, consulted at " + consulted;
    return (
      '<svg class="strip" viewBox="0 0 ' + n + ' 1" preserveAspectRatio="none" shape-rendering="crispEdges" ' +
      'role="img" aria-label="' + label + '"><title>' + label + " (click to jump to a step)</title>" + rects + "</svg>"
    );
  }

  // an item's output on screen: its first, or the sampled output picked with the buttons
  function picked(k, id, sample) {
    const n = state.pick[k + "|" + id] || 0;
    return n && sample.others && sample.others[n - 1] ? [n, sample.others[n - 1]] : [0, sample];
  }

  function pickerHtml(k, id, sample, n) {
    if (!sample.others) return "";
    const buttons = [0, ...sample.others.map((_, i) => i + 1)].map(
      (i) =>
        '<button type="button" class="pick' + (i === n ? " on" : "") + '" data-run="' + k + '" data-id="' + esc(id) +
        '" data-pick="' + i + '" aria-pressed="' + (i === n) + '">' + i + "</button>"
    );
    return (
      '<p class="outputs">sampled output ' + buttons.join("") + " of " + (sample.others.length + 1) +
      " &middot; item score (mean) " + fmt(sample.score, 2) + "</p>"
    );
  }

  function columnHtml(k, j, g, sample, vocab) {
    const run = RUNS[k];
    const head = '<h3>' + esc(run.label) + (run.params !== "-" ? " <small>" + esc(run.params) + "</small>" : "") + "</h3>";
    if (!sample) return '<section class="col missing">' + head + "<p>not in this run</p></section>";
    const [n, out] = picked(k, g.ids[j], sample);
    const t = out.tok;
    const score = sample.others ? out.own : sample.score; // several outputs: this one's own score
    const ok = score != null && score >= g.correct_at;
    const badge =
      score == null
        ? '<span class="badge">no score</span>'
        : '<span class="badge ' + (ok ? "ok" : "bad") + '">' + (ok ? "&#10003; correct" : "&#10007; wrong") + "</span>";
    const acted = t.s.filter((s, i) => weight(t, i) > 0).length;
    const meta =
      badge + " score " + fmt(score, score != null && Number.isInteger(score) ? 0 : 2) +
      ' &middot; prediction <b class="pred">' + esc(out.prediction || "n/a") + "</b>" +
      " &middot; intervention " + pct(run.rate[j]) + (run.unit !== "token" ? " of " + esc(run.unit) + "s" : "") +
      " (" + acted + " of " + t.s.length + " steps) &middot; stop: " + esc(out.stop || "n/a") +
      ((run.fail || [])[j] && run.fail[j].length ? ' &middot; <b class="fail">' + esc(run.fail[j].join(", ")) + "</b>" : "");
    return (
      '<section class="col" data-run="' + run.key + '">' + head + pickerHtml(k, g.ids[j], sample, n) +
      '<p class="meta">' + meta + "</p>" + stripSvg(t) + '<div class="text" data-run="' + k + '" data-sample="' +
      esc(g.ids[j]) + '">' + tokensHtml(t, vocab, out.stop) + "</div></section>"
    );
  }

  async function render() {
    const g = group();
    const runs = visibleRuns();
    const list = items();
    const size = Number($("f-size").value);
    const pages = Math.max(1, Math.ceil(list.length / size));
    state.page = Math.min(state.page, pages - 1);
    const page = list.slice(state.page * size, state.page * size + size);
    const wanted = [];
    page.forEach((j) => runs.forEach((k) => RUNS[k].chunk[j] != null && wanted.push(RUNS[k].key + "-" + RUNS[k].chunk[j])));
    const ticket = (state.ticket = (state.ticket || 0) + 1);
    $("status").textContent = "Loading...";
    let loaded;
    try {
      loaded = await Promise.all([...new Set(wanted)].map(loadChunk));
    } catch (err) {
      $("status").textContent = "Error: " + err.message;
      return;
    }
    if (ticket !== state.ticket || !loaded) return; // a newer render started meanwhile
    state.shown = {};
    const cards = page.map((j) => {
      const id = g.ids[j];
      const cols = runs.map((k) => {
        const run = RUNS[k];
        const chunk = run.chunk[j] == null ? null : chunks[run.key + "-" + run.chunk[j]];
        const sample = chunk ? chunk.samples[id] : null;
        if (sample) state.shown[k + "|" + id] = { t: picked(k, id, sample)[1].tok, vocab: chunk.vocab, run: k };
        return [k, sample, chunk ? chunk.vocab : null];
      });
      const first = cols.find(([, s]) => s);
      const prompt = first ? RUNS[first[0]].prompt_prefix + first[1].prompt : "";
      return (
        '<article class="item" data-id="' + esc(id) + '"><header><h2>' + esc(id) + "</h2>" +
        '<span class="gold">gold: <b>' + esc(first ? first[1].gold || "n/a" : "n/a") + "</b></span></header>" +
        '<details class="prompt"><summary>prompt (as the base read it)</summary><pre>' + esc(prompt) + "</pre></details>" +
        '<div class="cols" style="grid-template-columns:repeat(' + Math.max(1, runs.length) + ',minmax(17rem,1fr))">' +
        cols.map(([k, sample, vocab]) => columnHtml(k, j, g, sample, vocab)).join("") + "</div></article>"
      );
    });
    $("items").innerHTML = cards.join("") || '<p class="none">No item matches these filters.</p>';
    const total = g.ids.length;
    const from = list.length ? state.page * size + 1 : 0;
    $("status").textContent =
      "Items " + from + "-" + (state.page * size + page.length) + " of " + list.length + " shown (" + total +
      " in " + g.benchmark_label + ", " + g.pair_label + "). " + (runs.length ? "" : "Tick a method to see outputs.");
    $("status").dataset.count = String(list.length);
    document.querySelectorAll(".pager").forEach((nav) => {
      nav.querySelector(".pageinfo").textContent = "page " + (state.page + 1) + " of " + pages;
      nav.querySelector(".prev").disabled = state.page === 0;
      nav.querySelector(".next").disabled = state.page >= pages - 1;
    });
    const notes = [...new Set(runs.filter((k) => !RUNS[k].decoded).map((k) => RUNS[k].tokens))];
    $("source").textContent =
      "Runs from " + INDEX.results + ", built " + INDEX.generated + ". " + g.setting + (notes.length ? ". " + notes.join("; ") : "");
  }

  function changed() {
    state.page = 0;
    render();
  }

  // ---- the tooltip (hover or keyboard focus)
  function tipHtml(entry, i) {
    const { t, vocab, run } = entry;
    const row = (label, value, field) =>
      "<dt>" + label + '</dt><dd data-f="' + field + '">' + value + "</dd>";
    const who = t.s[i] === 1 ? "the guidance" : t.s[i] === 2 ? "a blend (alpha " + fmt(t.a[i], 2) + ")" : "the base";
    const name = tokenName(vocab, t.ch[i]);
    let piece = t.p[i] == null ? "past the stored output (it spelled the stop string)" : JSON.stringify(t.p[i]);
    if (name && t.p[i] != null && name.startsWith(piece + " (")) piece = ""; // the id's text is the piece
    piece = [piece, name || (t.ch[i] < 0 ? "spelled from a guidance token" : "")].filter(Boolean).join(", ");
    let html = "<p class=\"tiphead\">" + esc(RUNS[run].label) + ", step " + (i + 1) + " of " + t.s.length + ": chosen by " + who + "</p><dl>";
    html += row("token", esc(piece), "token");
    html += row("u (base top-1 prob)", fmt(t.u[i]), "u");
    html += row("alpha", fmt(t.a[i]), "alpha");
    html += row("base's top token", esc(tokenName(vocab, t.b[i])) + ", p " + fmt(t.u[i]), "base_top");
    if (t.c[i]) {
      const guide = tokenName(vocab, t.g[i]) || "no single base token";
      html += row("guidance's top token", esc(guide) + ", p " + fmt(t.gp[i]), "guide_top");
      html += row("its rank in the base", (t.r[i] < 0 ? "n/a" : t.r[i]) + " (base p " + fmt(t.pg[i]) + ")", "rank");
      html += row("spelled by the base tokenizer", t.sp[i] == null ? "not recorded" : t.sp[i] ? "yes" : "no", "spelled");
    } else {
      html += row("guidance", "not consulted (the base was sure enough)", "guide_top");
    }
    html += row(
      "consulted / applied / changed the token",
      (t.c[i] ? "yes" : "no") + " / " + (t.ap[i] ? "yes" : "no") + " / " + (t.o[i] ? "yes" : "no"),
      "flags"
    );
    if (t.s[i] === 2) html += row("blended prob of the token", fmt(t.bp[i]), "blend_prob");
    return html + "</dl>";
  }

  function showTip(el) {
    const box = el.closest(".text");
    const entry = box && state.shown[box.dataset.run + "|" + box.dataset.sample];
    if (!entry) return;
    const tip = $("tip");
    tip.innerHTML = tipHtml(entry, Number(el.dataset.i));
    tip.hidden = false;
    el.setAttribute("aria-describedby", "tip");
    const rect = el.getBoundingClientRect();
    const width = tip.offsetWidth;
    const left = Math.min(rect.left, document.documentElement.clientWidth - width - 8);
    const below = rect.bottom + 8 + tip.offsetHeight < window.innerHeight;
    tip.style.left = Math.max(4, left) + window.scrollX + "px";
    tip.style.top = (below ? rect.bottom + 6 : rect.top - tip.offsetHeight - 6) + window.scrollY + "px";
  }

  function hideTip(el) {
    $("tip").hidden = true;
    if (el) el.removeAttribute("aria-describedby");
  }

  function focusToken(box, i) {
    const tokens = box.querySelectorAll(".tok");
    if (!tokens.length) return;
    const next = tokens[Math.max(0, Math.min(tokens.length - 1, i))];
    box.querySelectorAll('.tok[tabindex="0"]').forEach((el) => el.setAttribute("tabindex", "-1"));
    next.setAttribute("tabindex", "0"); // roving tabindex: Tab leaves the text, arrows move inside it
    next.focus();
  }

  function wire() {
    const items = $("items");
    items.addEventListener("mouseover", (e) => e.target.classList.contains("tok") && showTip(e.target));
    items.addEventListener("mouseout", (e) => e.target.classList.contains("tok") && e.target !== document.activeElement && hideTip(e.target));
    items.addEventListener("focusin", (e) => e.target.classList.contains("tok") && showTip(e.target));
    items.addEventListener("focusout", (e) => e.target.classList.contains("tok") && hideTip(e.target));
    items.addEventListener("keydown", (e) => {
      const el = e.target;
      if (!el.classList.contains("tok")) return;
      const i = Number(el.dataset.i);
      const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: 1e9 };
      if (e.key in moves) {
        e.preventDefault();
        focusToken(el.closest(".text"), moves[e.key]);
      } else if (e.key === "Escape") {
        hideTip(el);
      }
    });
    items.addEventListener("click", (e) => {
      const pick = e.target.closest("button.pick");
      if (pick) {
        state.pick[pick.dataset.run + "|" + pick.dataset.id] = Number(pick.dataset.pick);
        render();
        return;
      }
      const svg = e.target.closest("svg.strip");
      if (!svg) return;
      const rect = svg.getBoundingClientRect();
      const n = svg.viewBox.baseVal.width;
      focusToken(svg.nextElementSibling, Math.floor(((e.clientX - rect.left) / rect.width) * n));
    });
    $("f-benchmark").addEventListener("change", fillPairs);
    $("f-pair").addEventListener("change", fillSettings);
    $("f-setting").addEventListener("change", fillMethods);
    ["f-methods", "f-ref", "f-outcome", "f-failure", "f-rate-min", "f-rate-max", "f-sort", "f-a", "f-b", "f-size"].forEach((id) =>
      $(id).addEventListener("change", changed)
    );
    $("f-u").addEventListener("change", () => document.body.classList.toggle("show-u", $("f-u").checked));
    document.querySelectorAll(".pager .prev").forEach((b) => b.addEventListener("click", () => { state.page--; render(); }));
    document.querySelectorAll(".pager .next").forEach((b) => b.addEventListener("click", () => { state.page++; render(); }));
  }

  function legend() {
    $("sw-base").style.background = shade(0);
    $("sw-guide").style.background = shade(1);
    $("sw-kept").style.background = shade(0);
    $("sw-u").style.background = shade(0);
    $("sw-ramp").style.background = "linear-gradient(90deg," + [0.01, 0.25, 0.5, 0.75, 1].map(shade).join(",") + ")";
    const cells = [0, 0, 1, 0, 0.4, 0.8, 0, -1, 1, 0];
    $("sw-strip").innerHTML = cells
      .map((w, i) => '<rect x="' + i + '" y="0" width="1" height="1" fill="' + (w < 0 ? CONSULTED_GREY : stripShade(w)) + '"/>')
      .join("");
  }

  legend();
  wire();
  if (!GROUPS.length) {
    $("status").textContent = "No runs in this viewer.";
  } else {
    fillBenchmarks();
  }
})();
