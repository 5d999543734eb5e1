// The stabilizer dashboard: polls dashboard/data, keeps a short history of every node's
// counters and draws its rates; no dependencies. Every value shown goes in as text.
"use strict";
(() => {
  // ?interval= in ms: at least 250 (a link must not make a tab poll without pause)
  const asked = Number(new URLSearchParams(location.search).get("interval"));
  const POLL_MS = Number.isFinite(asked) && asked > 0 ? Math.max(asked, 250) : 2000;
  const POINTS = 60; // rate samples kept per node
  const history = new Map(); // node_id -> {last: report row, in: [..], out: [..]}
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = (value, digits = 1) =>
    value === null || value === undefined ? "–" : Number(value).toFixed(digits);

  function ago(seconds) {
    if (seconds === undefined) return "–";
    return seconds < 1 ? "now" : seconds < 120 ? `${seconds.toFixed(0)} s ago`
      : `${(seconds / 60).toFixed(0)} min ago`;
  }

  // A rate point each time a node's report is newer than the one before.
  function record(row) {
    let entry = history.get(row.node_id);
    if (!entry) history.set(row.node_id, entry = { last: null, in: [], out: [] });
    const last = entry.last;
    if (last && row.at > last.at) {
      const span = row.at - last.at;
      entry.in.push(Math.max(0, (row.messages_in - last.messages_in) / span));
      entry.out.push(Math.max(0, (row.messages_out - last.messages_out) / span));
      if (entry.in.length > POINTS) { entry.in.shift(); entry.out.shift(); }
    }
    if (!last || row.at > last.at) entry.last = row;
    return entry;
  }

  function spark(entry) {
    const canvas = el("canvas", { width: "150", height: "30" });
    const ctx = canvas.getContext("2d");
    const top = Math.max(1, ...entry.in, ...entry.out);
    const slots = Math.min(POINTS, Math.max(12, entry.in.length)); // widens as it fills
    const step = 150 / (slots - 1);
    for (const [series, color] of [[entry.in, "#2f6fde"], [entry.out, "#1c9c6b"]]) {
      if (series.length < 2) continue;
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      const offset = slots - series.length;
      series.forEach((value, i) => {
        const x = (offset + i) * step;
        const y = 28 - (value / top) * 26;
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    return canvas;
  }

  const latest = (series) => (series.length ? series[series.length - 1] : null);

  function renderNodes(nodes) {
    const body = $("nodes").tBodies[0];
    const rows = [];
    let totalIn = 0, totalOut = 0;
    for (const row of nodes) {
      const entry = row.at === undefined ? null : record(row);
      const rateIn = entry ? latest(entry.in) : null;
      const rateOut = entry ? latest(entry.out) : null;
      if (row.state !== "expired") { totalIn += rateIn || 0; totalOut += rateOut || 0; }
      const name = el("td", { "data-field": "node_id", class: row.self ? "self" : "" },
        row.node_id);
      rows.push(el("tr", { "data-node": row.node_id, "data-samples": entry ? entry.in.length : 0 },
        name,
        el("td", { "data-field": "state", class: `state-${row.state}` }, row.state),
        el("td", { "data-field": "connections", class: "num" }, row.connections ?? "–"),
        el("td", { "data-field": "last-seen" }, ago(row.age)),
        el("td", { "data-field": "rates" }, el("div", { class: "rate" },
          entry ? spark(entry) : "", `${fmt(rateIn)} · ${fmt(rateOut)}`)),
        el("td", { "data-field": "outbox", class: "num" },
          row.outbox_frames === undefined ? "–"
            : `${row.outbox_frames} · ${row.outbox_max_frames}`),
        el("td", { "data-field": "latency", class: "num" },
          row.backend_latency_ms == null ? "–" : `${fmt(row.backend_latency_ms, 2)} ms`)));
    }
    body.replaceChildren(...rows);
    $("total-in").textContent = fmt(totalIn);
    $("total-out").textContent = fmt(totalOut);
    for (const id of history.keys()) {
      if (!nodes.some((row) => row.node_id === id)) history.delete(id);
    }
  }

  // What the members column counts (dashboard.py, _groups).
  const COUNTED = {
    cluster: "(the largest of each node; members on every node, resumable sessions included)",
    reported: "(the largest of each node; connected members as the nodes reported them: " +
      "the store is unreachable, a node that did not name a group adds none)",
  };

  function renderGroups(groups, counted) {
    $("groups-counted").textContent = COUNTED[counted] ?? "";
    const rows = groups.map((g) => el("tr", { "data-group": g.group },
      el("td", {}, g.group), el("td", { class: "num", "data-field": "members" }, g.members)));
    if (!rows.length) rows.push(el("tr", {}, el("td", { class: "muted" }, "no groups")));
    $("groups").tBodies[0].replaceChildren(...rows);
  }

  async function poll() {
    try {
      const response = await fetch("dashboard/data", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      $("node-count").textContent = data.nodes.filter((n) => n.state !== "expired").length;
      $("cluster-connections").textContent = data.cluster_connections ?? "–";
      $("backend").textContent = data.backend + (data.backend_available ? "" : " (unreachable)");
      renderNodes(data.nodes);
      renderGroups(data.groups, data.groups_counted);
      $("status").textContent = `via ${data.node_id}, ${new Date(data.time * 1000)
        .toLocaleTimeString()}`;
      $("status").className = "stat";
    } catch (error) {
      $("status").textContent = `no data: ${error.message}`;
      $("status").className = "stat error";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  async function disconnect(clientId, button) {
    button.disabled = true;
    const response = await fetch("dashboard/disconnect", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ client_id: clientId }),
    });
    const body = await response.json().catch(() => ({}));
    button.replaceWith(el("span", { class: response.ok && body.disconnected ? "muted" : "error",
      "data-field": "outcome" },
      response.ok ? (body.disconnected ? "disconnected" : "not connected")
        : (body.error || `HTTP ${response.status}`)));
  }

  async function search(event) {
    event.preventDefault();
    const query = $("query").value.trim();
    const results = $("results");
    if (!query) return;
    results.replaceChildren("searching…");
    try {
      const response = await fetch(`dashboard/clients?q=${encodeURIComponent(query)}`,
        { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      if (!body.matches.length) {
        results.replaceChildren(el("span", { "data-field": "no-match" },
          `${query} is not connected`));
        return;
      }
      results.replaceChildren(el("table", {}, ...body.matches.map((m) => {
        const button = el("button", { class: "danger", type: "button" }, "Disconnect");
        button.addEventListener("click", () => disconnect(m.client_id, button));
        return el("tr", { "data-client": m.client_id },
          el("td", {}, m.client_id), el("td", { "data-field": "node" }, m.node_id),
          el("td", { class: "muted" }, m.user_id ? `user ${m.user_id}` : ""),
          el("td", {}, button));
      })));
    } catch (error) {
      results.replaceChildren(el("span", { class: "error" }, error.message));
    }
  }

  $("search").addEventListener("submit", search);
  poll();
})();
