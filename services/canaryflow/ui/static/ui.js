// The web view's pages: they lay out what /api answers (decided in canaryflow.ui.view), plot
// it with uPlot, and follow /api/stream (server-sent events from the bus) to ask again when
// something moved. Text goes in with textContent only: event fields are never HTML.
"use strict";
window.canaryflow = (function () {
  const $ = (selector) => document.querySelector(selector);

  function el(tag, text, attributes) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  function row(cells, attributes) {
    const tr = el("tr", null, attributes);
    for (const cell of cells) {
      const td = el("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(table, rows) {
    const body = table.querySelector("tbody");
    body.replaceChildren(...rows);
  }

  function ago(seconds) {
    if (seconds < 120) return seconds + "s";
    if (seconds < 7200) return Math.floor(seconds / 60) + "m";
    return Math.floor(seconds / 3600) + "h";
  }

  function clock(iso) { return new Date(iso).toLocaleTimeString(); }

  function statusBadge(release) {
    const word = release.paused && !release.terminal ? "paused" : release.status;
    return el("span", word.replace("_", " "), { class: "status " + word });
  }

  // Ask again at most every `gap` ms, whatever the number of events in between.
  function throttled(action, gap) {
    let running = false, again = false;
    async function run() {
      if (running) { again = true; return; }
      running = true;
      try { await action(); } finally {
        running = false;
        if (again) { again = false; setTimeout(run, gap); }
      }
    }
    return run;
  }

  function follow(release, onEvent) {
    // `release`: one id, several (a group and its members), or none (every event).
    const query = [].concat(release || []).filter(Boolean).map((id) => "release=" + encodeURIComponent(id)).join("&");
    const source = new EventSource("/api/stream" + (query ? "?" + query : ""));
    source.addEventListener("ready", () => { $("#live").textContent = "live"; });
    source.addEventListener("bus", (message) => onEvent(JSON.parse(message.data)));
    source.onerror = () => { $("#live").textContent = "reconnecting…"; };
    return source;
  }

  function showMe(me) {
    $("#me").textContent = me.name ? "you are " + me.name + (me.signs ? " (commands signed)" : " (unsigned)") : "read-only";
  }

  // A group's members or a pipeline's environments, in order: each one's name and state.
  function members(list, name) {
    const box = el("span");
    list.forEach((m, i) => {
      const word = stateWord(m.state);
      const item = el("span", null, { class: "member", "data-member": m.release_id, "data-state": m.state });
      item.appendChild(document.createTextNode((i ? "→ " : "") + name(m) + " "));
      item.appendChild(el("span", m.state.replace("_", " "), { class: "status " + word }));
      box.appendChild(item);
    });
    return box;
  }

  function stateWord(state) { return state.replace(/ /g, "-"); }

  // ------------------------------------------------------------------ list
  function listPage() {
    const params = new URLSearchParams(location.search);
    const namespace = $("#namespace"), status = $("#status");
    async function load() {
      const query = new URLSearchParams({ namespace: namespace.value || params.get("namespace") || "", status: status.value || params.get("status") || "" });
      const answer = await (await fetch("/api/releases?" + query)).json();
      for (const [select, values, chosen] of [[namespace, answer.namespaces, answer.filter.namespace], [status, answer.statuses, answer.filter.status]]) {
        const known = new Set([...select.options].map((o) => o.value));
        for (const value of values) if (!known.has(value)) select.appendChild(el("option", value, { value }));
        select.value = chosen;
      }
      const line = (r) => {
        const link = el("a", r.id, { href: "/releases/" + encodeURIComponent(r.id) });
        return row([link, r.namespace, r.target, (r.stable || "?") + " → " + r.canary, r.step,
          r.serving + " % (step " + r.weight + " %)", statusBadge(r), ago(r.age_seconds)], { "data-release": r.id });
      };
      fill($("#in-flight"), answer.in_flight.map(line));
      fill($("#recent"), answer.recent.map(line));
      fill($("#groups"), answer.groups.map((g) => row([
        el("a", g.id, { href: "/groups/" + encodeURIComponent(g.id) }), members(g.members, (m) => m.namespace + "/" + m.target),
        statusBadge(g), ago(g.age_seconds)], { "data-group": g.id })));
      fill($("#pipelines"), answer.pipelines.map((p) => row([
        el("a", p.id, { href: "/pipelines/" + encodeURIComponent(p.id) }), p.target + " " + p.image,
        members(p.environments, (e) => e.name), statusBadge(p), ago(p.age_seconds)], { "data-pipeline": p.id })));
    }
    const reload = throttled(load, 300);
    for (const select of [namespace, status]) select.addEventListener("change", () => {
      const query = new URLSearchParams({ namespace: namespace.value, status: status.value });
      history.replaceState(null, "", "/?" + query);
      reload();
    });
    fetch("/api/me").then((r) => r.json()).then(showMe);
    follow("", reload);
    reload();
  }

  // ------------------------------------------------------------------ one release
  const plots = new Map(); // chart id -> uPlot

  function chart(id, container, title, series, data, yLabel) {
    if (typeof uPlot === "undefined") return; // assets missing: tables only
    let plot = plots.get(id);
    if (plot && plot.series.length === series.length + 1) { plot.setData(data); return; }
    if (plot) plot.destroy();
    let box = document.getElementById(id);
    if (!box) { box = el("div", null, { id, class: "plot", "data-metric": title }); container.appendChild(box); }
    const options = {
      title, width: Math.min(container.clientWidth || 560, 580), height: 220,
      series: [{}, ...series],
      axes: [{}, { label: yLabel }],
      scales: { x: { time: true } },
    };
    plot = new uPlot(options, data, box);
    plots.set(id, plot);
  }

  function drawSeries(page) {
    const container = $("#plots");
    for (const s of page.series) {
      const t = s.points.map((p) => p.t);
      const safe = s.metric.replace(/[^a-zA-Z0-9_-]/g, "_");
      if (s.kind === "comparison") {
        chart("plot-" + safe, container, s.metric + ": canary vs baseline", [
          { label: "canary", stroke: "#d9480f", width: 2 },
          { label: "baseline", stroke: "#1c7ed6", width: 2 },
        ], [t, s.points.map((p) => p.canary), s.points.map((p) => p.baseline)], "value");
        if (s.points.some((p) => p.estimate !== null)) {
          const pct = (v) => (v === null ? null : 100 * v);
          chart("lift-" + safe, container, s.metric + ": relative change and its interval (%)", [
            { label: "estimate", stroke: "#5f3dc4", width: 2 },
            { label: "lower", stroke: "#b197fc", dash: [4, 4] },
            { label: "upper", stroke: "#b197fc", dash: [4, 4] },
          ], [t, s.points.map((p) => pct(p.estimate)), s.points.map((p) => pct(p.lower)), s.points.map((p) => pct(p.upper))], "%");
        }
      } else {
        chart("plot-" + safe, container, s.metric + ": canary against its limit", [
          { label: "canary", stroke: "#d9480f", width: 2 },
          { label: "baseline", stroke: "#1c7ed6", width: 2 },
          { label: "limit", stroke: "#868e96", dash: [6, 4] },
        ], [t, s.points.map((p) => p.canary), s.points.map((p) => p.baseline), s.points.map((p) => p.threshold)], "value");
      }
    }
  }

  function evidence(checks) {
    return checks.map((c) => {
      const base = c.baseline_value !== null && c.baseline_value !== undefined ? " vs baseline " + fmt(c.baseline_value) : "";
      const limit = c.threshold !== null && !c.method ? " (limit " + c.comparison + " " + fmt(c.threshold) + ")" : "";
      const verdict = c.passed === true ? "ok" : c.passed === false ? "FAILED" : "undecided";
      return c.metric + ": " + c.track + " " + fmt(c.value) + base + limit + " n=" + Math.round(c.sample_size) + " → " + verdict + (c.decision ? " — " + c.decision : "");
    }).join("\n");
  }

  function fmt(v) {
    if (v === null || v === undefined) return "no data";
    return Math.abs(v) >= 0.001 || v === 0 ? Number(v.toPrecision(3)).toString() : v.toExponential(2);
  }

  function draw(page) {
    const r = page.release;
    document.title = "canaryflow: " + page.id;
    $("#title").textContent = page.id;
    $("#title").appendChild(document.createTextNode(" "));
    if (r) $("#title").appendChild(statusBadge(r));
    $("#summary").textContent = r ? r.namespace + "/" + r.target + ": " + (r.stable || "?") + " → " + r.canary +
      ", step " + r.step + ", canary serving " + r.serving + " %, requested by " + r.requested_by +
      (r.outcome ? ". " + r.outcome : "") : "(no state recorded)";
    $("#trace").replaceChildren(...(page.trace ? [el("a", "its trace in Jaeger", { href: page.trace, id: "trace-link", target: "_blank" })] : []));
    $("#steps").replaceChildren(...page.steps.map((s) => el("li", "step " + (s.index + 1) + ": " + s.weight + " %, " + s.hold_seconds + " s", { class: s.state })));
    chart("weights-plot", $("#weights"), "canary's share (%)", [
      { label: "planned", stroke: "#868e96", dash: [6, 4], paths: typeof uPlot !== "undefined" ? uPlot.paths.stepped({ align: 1 }) : undefined },
      { label: "serving", stroke: "#d9480f", width: 2, paths: typeof uPlot !== "undefined" ? uPlot.paths.stepped({ align: 1 }) : undefined },
    ], [page.weights.map((p) => p.t), page.weights.map((p) => p.planned), page.weights.map((p) => p.serving)], "%");
    drawSeries(page);
    fill($("#verdicts"), page.verdicts.slice().reverse().map((v) => {
      const tr = row([clock(v.time), v.step + 1, el("span", v.result + (v.final ? " (final)" : ""), { class: "result " + v.result }), v.action, v.reason, ""], { "data-event-id": v.id });
      tr.lastChild.className = "evidence";
      tr.lastChild.style.whiteSpace = "pre-line";
      tr.lastChild.textContent = evidence(v.checks);
      return tr;
    }));
    fill($("#hooks"), page.hooks.map((h) => row([h.name, h.type, h.state, h.detail])));
    fill($("#commands"), page.commands.slice().reverse().map((c) => {
      const what = c.action + (c.weight ? " " + c.weight + " %" : "") + (c.gate ? " " + c.gate : "");
      const outcome = c.refused ? el("span", "refused: " + c.refused, { class: "refused" }) : el("span", "sent", { class: "obeyed" });
      return row([clock(c.time), what, c.actor, c.reason, c.signed ? "yes" : "no", outcome], { "data-command-id": c.id });
    }));
    fill($("#events"), page.events.slice().reverse().map((e) => row([clock(e.time), e.type, e.source, e.summary], { "data-event-id": e.id })));
    showMe(page.me);
    drawActions(page);
  }

  let current = null;
  function drawActions(page) {
    current = page;
    const section = $("#actions");
    section.hidden = !(page.me.can_act && page.actions.length);
    if (section.hidden) return;
    const buttons = $("#buttons");
    const wanted = page.actions.join(",");
    if (buttons.dataset.actions === wanted) return;
    buttons.dataset.actions = wanted;
    buttons.replaceChildren(...page.actions.map((action) => {
      const button = el("button", action, { type: "button", "data-action": action });
      button.addEventListener("click", () => act(action));
      return button;
    }));
    $("#weight-field").hidden = !page.actions.includes("set-weight");
    $("#gate-field").hidden = !page.actions.includes("open-gate");
  }

  async function act(action) {
    const result = $("#action-result");
    const body = { action, reason: $("#reason").value };
    if (action === "set-weight") body.weight = Number($("#weight").value);
    if (action === "open-gate") body.gate = $("#gate").value || (current.waiting ? current.waiting.queue[0] : "");
    result.textContent = "sending " + action + "…";
    const answer = await fetch("/api/releases/" + encodeURIComponent(current.id) + "/commands", {
      method: "POST", headers: { "Content-Type": "application/json", "X-Canaryflow-Action": "1" }, body: JSON.stringify(body),
    });
    if (!answer.ok) { result.textContent = action + " not sent: " + (await answer.text()); return; }
    const sent = await answer.json();
    result.textContent = action + " sent" + (sent.signed ? " signed" : "") + " as " + sent.actor + "; the planner decides (see Operator commands)";
    result.dataset.commandId = sent.id;
  }

  function releasePage() {
    const id = decodeURIComponent(location.pathname.split("/").pop());
    async function load() {
      const answer = await fetch("/api/releases/" + encodeURIComponent(id));
      if (!answer.ok) { $("#summary").textContent = await answer.text(); return; }
      draw(await answer.json());
    }
    const reload = throttled(load, 200);
    follow(id, reload);
    reload();
  }

  // ------------------------------------------------------------------ a group, a pipeline
  function drawCommon(page, whole, summary) {
    document.title = "canaryflow: " + page.id;
    $("#title").textContent = page.id;
    $("#title").appendChild(document.createTextNode(" "));
    if (whole) $("#title").appendChild(statusBadge(whole));
    $("#summary").textContent = whole ? summary : "(no state recorded)";
    $("#trace").replaceChildren(...(page.trace ? [el("a", "its trace in Jaeger", { href: page.trace, id: "trace-link", target: "_blank" })] : []));
    const o = page.outcome;
    $("#outcome").textContent = o ? (o.result ? o.result.replace("_", " ") + ": " : "") + o.summary : "not ended yet";
    $("#evidence").textContent = o && o.evidence.length ? evidence(o.evidence) : "";
    fill($("#events"), page.events.slice().reverse().map((e) => row([clock(e.time), e.type, e.source, e.summary], { "data-event-id": e.id })));
  }

  function releaseLink(id) { return el("a", id, { href: "/releases/" + encodeURIComponent(id) }); }

  function chain(list, name) {
    $("#chain").replaceChildren(...list.map((m) => el("li", name(m) + ": " + m.state.replace("_", " "), { class: stateWord(m.state), "data-member": m.release_id })));
  }

  function drawGroup(page) {
    const g = page.group;
    drawCommon(page, g, g ? page.members.length + " member(s), requested by " + g.requested_by + (g.reason ? ": " + g.reason : "") : "");
    chain(page.members, (m) => m.namespace + "/" + m.target);
    fill($("#members"), page.members.map((m) => row([m.index + 1, m.started_at ? releaseLink(m.release_id) : m.release_id,
      m.namespace + "/" + m.target, m.image, el("span", m.state.replace("_", " "), { class: "status " + stateWord(m.state) }),
      m.release ? m.release.status : "", m.release ? m.release.step : "", m.release ? m.release.serving + " %" : ""],
      { "data-member": m.release_id, "data-state": m.state })));
    const gate = page.gate;
    $("#gate").textContent = !gate ? "" : gate.promoting ? "opened: every member passed, promoting in order"
      : gate.waiting.length ? "waiting: " + gate.waiting.join(", ") + " passed and wait for the others"
      : g && g.terminal ? "closed: the group ended" : "no member waits yet";
  }

  function drawPipeline(page) {
    const p = page.pipeline;
    drawCommon(page, p, p ? p.target + " " + p.image + " through " + page.environments.map((e) => e.name).join(" → ") +
      ", requested by " + p.requested_by + (p.waiting_gate ? ". Waits at the gate before " + p.waiting_gate +
      ": canaryflow open-pipeline-gate " + page.id + " " + p.waiting_gate : "") : "");
    chain(page.environments, (e) => e.name);
    fill($("#environments"), page.environments.map((e) => row([e.index + 1, e.name, e.namespace,
      e.gate ? e.gate_state + (e.gate_opened_by ? " by " + e.gate_opened_by : "") : "none",
      e.started_at ? releaseLink(e.release_id) : e.release_id, el("span", e.state.replace("_", " "), { class: "status " + stateWord(e.state) }),
      e.release ? e.release.step : "", e.release ? e.release.serving + " %" : ""],
      { "data-member": e.release_id, "data-state": e.state })));
  }

  // Load once, then follow the whole and its members' releases (their ids do not change).
  function wholePage(kind, draw) {
    const id = decodeURIComponent(location.pathname.split("/").pop());
    let source = null;
    async function load() {
      const answer = await fetch("/api/" + kind + "/" + encodeURIComponent(id));
      if (!answer.ok) { $("#summary").textContent = await answer.text(); return; }
      const page = await answer.json();
      draw(page);
      if (!source) source = follow([id, ...page.release_ids], reload);
    }
    const reload = throttled(load, 300);
    fetch("/api/me").then((r) => r.json()).then(showMe);
    reload();
  }

  function groupPage() { wholePage("groups", drawGroup); }
  function pipelinePage() { wholePage("pipelines", drawPipeline); }

  return { listPage, releasePage, groupPage, pipelinePage };
})();
