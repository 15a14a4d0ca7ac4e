// starburst dashboard: renders the head's snapshots, pushed over server-sent events.
"use strict";
(function () {
  const token = document.querySelector('meta[name="starburst-token"]').content;
  const $ = (id) => document.getElementById(id);
  const closedErrors = new Set();  // errors the reader folded: not unfolded again by an update

  function text(el, value) { if (el.textContent !== String(value)) el.textContent = String(value); }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  function usd(x) { return x == null ? "–" : "$" + (x < 10 ? x.toFixed(3) : x.toFixed(2)); }
  // The one duration format (starburst.aws.pricing.format_duration): "45 s", "12 min 30 s", "2 h 05 min".
  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }
  function cell(row, value, cls) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }
  function fill(tableId, items, columns, emptyText) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    if (!items.length) {
      const tr = body.insertRow();
      const td = cell(tr, emptyText, "empty");
      td.colSpan = $(tableId).tHead.rows[0].cells.length;
      return;
    }
    for (const item of items) {
      const tr = body.insertRow();
      for (const col of columns) {
        const v = col(item);
        if (v instanceof Node) { const td = document.createElement("td"); td.appendChild(v); tr.appendChild(td); }
        else cell(tr, v);
      }
    }
  }
  function bar(f) {
    const total = f.queued + f.running + f.done + f.failed || 1;
    const div = document.createElement("div");
    div.className = "bar";
    for (const [k, cls] of [["done", "b-done"], ["failed", "b-fail"], ["running", "b-run"], ["queued", "b-q"]]) {
      const span = document.createElement("span");
      span.className = cls;
      span.style.width = (100 * f[k] / total) + "%";
      div.appendChild(span);
    }
    return div;
  }

  function render(s) {
    text($("where"), `${s.cluster.provider || "local"} cluster ${s.head.cluster_id || ""} · head ${s.head.address} · up ${duration(s.uptime_s)} · ${s.sessions} driver(s)`);
    const cpus = s.nodes.reduce((a, n) => a + n.cpus, 0), busy = s.nodes.reduce((a, n) => a + n.cpus_busy, 0);
    text($("node-count"), s.nodes.length);
    text($("node-sub"), s.cluster.nodes_pending ? `${s.cluster.nodes_pending} starting` : "");
    text($("cpus-busy"), `${+busy.toFixed(2)}/${cpus}`);
    text($("cpus-sub"), cpus ? `${Math.round(100 * busy / cpus)}%` : "");
    text($("tasks-queued"), s.tasks.queued);
    text($("tasks-running"), s.tasks.running);
    text($("tasks-done"), s.tasks.done);
    text($("tasks-failed"), s.tasks.failed);
    text($("rate"), `${s.tasks.rate_per_s}/s`);
    text($("objects"), s.objects.count);
    text($("objects-sub"), `${bytes(s.objects.bytes)} · ${s.objects.stored} in ${s.objects.store === "s3" ? "S3" : "shared memory"}, ${s.objects.inline} inline`);
    const c = s.cluster;
    text($("cost"), c.provider === "fargate" ? usd(c.cost_usd) : "$0");
    text($("cost-sub"), c.provider === "fargate"
      ? `${usd(c.cost_per_hour)}/h` + (c.max_cost ? ` · ${usd(c.budget_left)} left` + (c.hours_left != null ? ` (${duration(c.hours_left * 3600)})` : "") : "")
      : "local: no charge");
    if (c.hybrid) {
      const h = c.hybrid;
      text($("cost-sub"), `${$("cost-sub").textContent} · tasks: ${h.tasks_local} here, ${h.tasks_cloud} on Fargate`
        + ` · burst ${h.burst}: ${h.burst_nodes} node(s), ${h.decision}`);
    }
    fill("nodes", s.nodes, [
      (n) => n.id, (n) => n.address, (n) => n.state, (n) => `${+n.cpus_busy.toFixed(2)}/${n.cpus}`,
      (n) => n.memory ? bytes(n.memory) : "–", (n) => n.running, (n) => n.executors, (n) => `${n.rtt_ms} ms`,
    ], "no node yet");
    fill("functions", s.functions, [
      (f) => f.name, (f) => f.queued, (f) => f.running, (f) => f.done, (f) => f.failed, (f) => `${f.rate_per_s}/s`, bar,
    ], "no task yet");
    fill("actors", s.actors, [
      (a) => a.class, (a) => a.name || "–", (a) => a.state + (a.detached ? " (detached)" : ""), (a) => a.node || "–",
      (a) => a.queued, (a) => a.running, (a) => a.restarts,
    ], "no actor");
    const out = $("output");
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.replaceChildren();
    for (const o of s.output) {
      const line = document.createElement("span");
      if (o.stream === "err") line.className = "err";
      line.textContent = o.text.split("\n").map((t) => `(${o.task} pid=${o.pid}${o.node ? ", node=" + o.node : ""}) ${t}`).join("\n") + "\n";
      out.appendChild(line);
    }
    if (atBottom) out.scrollTop = out.scrollHeight;
    const errors = $("errors");
    const wasOpen = new Set([...errors.querySelectorAll("details[open]")].map((d) => d.dataset.key));
    errors.replaceChildren();
    if (!s.errors.length) { const p = document.createElement("p"); p.className = "sub"; p.textContent = "no error"; errors.appendChild(p); }
    let newest = true;
    for (const e of s.errors.slice().reverse()) {
      const d = document.createElement("details");
      d.className = "error";
      d.dataset.key = `${e.t}/${e.task}`;
      d.open = wasOpen.has(d.dataset.key) || (newest && !closedErrors.has(d.dataset.key));
      d.addEventListener("toggle", () => { if (!d.open) closedErrors.add(d.dataset.key); });
      newest = false;
      const sum = document.createElement("summary");
      sum.textContent = `${e.task} (${e.job}) at ${new Date(e.t * 1000).toLocaleTimeString()}`;
      const pre = document.createElement("pre");
      pre.textContent = e.text;
      d.append(sum, pre);
      errors.appendChild(d);
    }
  }

  function connect() {
    const status = $("status");
    const source = new EventSource("/api/events?token=" + encodeURIComponent(token));
    source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
    source.onmessage = (ev) => render(JSON.parse(ev.data));
    source.onerror = () => { status.textContent = "disconnected (the head stopped?)"; status.className = "status down"; };
  }
  connect();
})();
