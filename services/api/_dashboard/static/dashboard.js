// The loramux dashboard: polls /dashboard/data and draws it with plain SVG.
//
// Every chart container gets data-* attributes once drawn (data-points, data-cells,
// data-bars, data-rows, data-state), so a headless browser can check what was drawn.
// Text from the server (adapter and tenant names) is only ever set with textContent.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const MAX_SAMPLES = 300; // 10 minutes at 2 s
  const WINDOW = 5; // hit rates are taken over the last WINDOW samples
  const MAX_ADAPTER_COLUMNS = 24;
  const KEY_STORAGE = "loramux.dashboard.key";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TIERS = ["gpu", "host", "disk"];
  const TIER_COLOURS = {
    overall: "#1d232b", gpu: "#1a9e5a", host: "#2f6fdb", disk: "#e0a21b",
    loading: "#9b59d0", store: "#d0483e", joined: "#8a939e",
  };
  const REPLICA_COLOURS = ["#1a9e5a", "#2f6fdb", "#e0a21b", "#9b59d0", "#d0483e",
    "#17a2b8", "#795548", "#e83e8c", "#6f42c1", "#20c997"];
  const LOAD_STEPS = [
    ["from_none", "store → disk"],
    ["from_disk", "disk → host"],
    ["from_host", "host → GPU"],
  ];

  const $ = (id) => document.getElementById(id);
  const samples = []; // {t, counters: {replicaId: {gpu: {hits, misses}, ...}}}
  let timer = null;

  // ---------------------------------------------------------------- the key

  function readKey() {
    const match = /(?:^#|&)key=([^&]+)/.exec(window.location.hash);
    if (match) {
      sessionStorage.setItem(KEY_STORAGE, decodeURIComponent(match[1]));
      // Drop the key from the address bar (and from the history) at once.
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem(KEY_STORAGE);
  }

  function askForKey(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    document.body.dataset.status = "need-key";
    $("status").textContent = "an API key is needed to show the data";
    $("key-error").textContent = message || "";
    $("key-form").hidden = false;
    $("sign-out").hidden = true;
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    $("key-form").hidden = true;
    samples.length = 0;
    poll();
  });

  $("sign-out").addEventListener("click", () => {
    clearTimeout(timer);
    samples.length = 0;
    askForKey("");
  });

  // ---------------------------------------------------------------- polling

  async function poll() {
    clearTimeout(timer);
    const key = readKey();
    if (!key) {
      askForKey("");
      return;
    }
    let response;
    try {
      response = await fetch("/dashboard/data", {
        headers: { Authorization: `Bearer ${key}` },
        cache: "no-store",
      });
    } catch (error) {
      showError(`cannot reach the service (${error.message}); retrying`);
      timer = setTimeout(poll, REFRESH_MS);
      return;
    }
    if (response.status === 401) {
      askForKey("that key was not accepted");
      return;
    }
    if (!response.ok) {
      showError(`the service answered ${response.status}: ${await errorMessage(response)}`);
      timer = setTimeout(poll, REFRESH_MS);
      return;
    }
    const data = await response.json();
    try {
      render(data);
    } catch (error) {
      showError(`could not draw the data: ${error.message}`);
      throw error;
    } finally {
      timer = setTimeout(poll, REFRESH_MS);
    }
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return (body.error && body.error.message) || response.statusText;
    } catch {
      return response.statusText;
    }
  }

  function showError(message) {
    document.body.dataset.status = "error";
    $("status").textContent = message;
  }

  // ---------------------------------------------------------------- rendering

  function render(data) {
    addSample(data.replicas);
    $("key-form").hidden = true;
    $("sign-out").hidden = false;
    $("scope").textContent = data.scope === "all" ? "all tenants" : `tenant ${data.tenant}`;
    renderStorage(data);
    renderHitRates(data.replicas);
    renderResidency(data);
    renderLatency(data.replicas);
    renderServedFrom(data.replicas);
    renderRouting(data.routing);
    renderBars($("top-adapters"), data.top_adapters, "adapter");
    renderBars($("top-tenants"), data.top_tenants, "tenant");
    renderReplicas(data.replicas);
    document.body.dataset.status = "ok";
    document.body.dataset.samples = String(samples.length);
    $("status").textContent =
      `${data.replicas.length} replica(s) · updated ${new Date().toLocaleTimeString()}`;
  }

  function addSample(replicas) {
    const counters = {};
    for (const replica of replicas) {
      counters[replica.replica_id] = {};
      for (const tier of TIERS) {
        const t = (replica.tiers || {})[tier] || { hits: 0, misses: 0 };
        counters[replica.replica_id][tier] = { hits: t.hits, misses: t.misses };
      }
    }
    samples.push({ t: Date.now(), counters });
    if (samples.length > MAX_SAMPLES) samples.shift();
  }

  // Hits over lookups between the sample WINDOW back (or the replicas' start) and now,
  // summed over the replicas ``pick`` accepts; ``measure`` reads cumulative [hits,
  // lookups] from one replica's counters. A replica whose counts went down restarted:
  // its counts since then are used. Null when there was no lookup in the window.
  function windowed(index, pick, measure) {
    const now = samples[index].counters;
    const then = index >= WINDOW ? samples[index - WINDOW].counters : {};
    let hits = 0;
    let lookups = 0;
    for (const [id, tiers] of Object.entries(now)) {
      if (!pick(id)) continue;
      const [h1, n1] = measure(tiers);
      const [h0, n0] = then[id] ? measure(then[id]) : [0, 0];
      const restarted = h1 < h0 || n1 < n0;
      hits += restarted ? h1 : h1 - h0;
      lookups += restarted ? n1 : n1 - n0;
    }
    return lookups > 0 ? hits / lookups : null;
  }

  function seriesOf(pick, measure) {
    return samples.map((sample, index) => [sample.t, windowed(index, pick, measure)]);
  }

  const tierHits = (tier) => (tiers) =>
    [tiers[tier].hits, tiers[tier].hits + tiers[tier].misses];
  // A request is served from cache unless it started a download from the object store
  // (a lookup that missed the host tier and did not hit the disk tier).
  const servedFromCache = (tiers) => {
    const requests = tiers.gpu.hits + tiers.gpu.misses;
    return [requests - Math.max(0, tiers.host.misses - tiers.disk.hits), requests];
  };
  const anyReplica = () => true;

  function renderHitRates(replicas) {
    const tierSeries = [
      { name: "served from cache (no download)", colour: TIER_COLOURS.overall, width: 3,
        points: seriesOf(anyReplica, servedFromCache) },
      ...TIERS.map((tier) => ({
        name: `${tier === "gpu" ? "GPU slot" : tier} hit`, colour: TIER_COLOURS[tier],
        dashed: tier !== "gpu", points: seriesOf(anyReplica, tierHits(tier)),
      })),
    ];
    lineChart($("hit-tiers"), $("hit-tiers-legend"), tierSeries);
    const replicaSeries = replicas.map((replica, i) => ({
      name: shortId(replica.replica_id), colour: REPLICA_COLOURS[i % REPLICA_COLOURS.length],
      points: seriesOf((id) => id === replica.replica_id, tierHits("gpu")),
    }));
    lineChart($("hit-replicas"), $("hit-replicas-legend"), replicaSeries);
  }

  function lineChart(container, legend, series) {
    const W = 560, H = 200, L = 40, R = 10, T = 10, B = 22;
    const svg = svgRoot(W, H);
    const times = samples.map((s) => s.t);
    const t0 = Math.min(...times), t1 = Math.max(...times, t0 + REFRESH_MS);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v) * (H - T - B);
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
      el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, svg).textContent =
        `${Math.round(v * 100)}%`;
    }
    el("text", { x: L, y: H - 6 }, svg).textContent = ago(t0);
    el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, svg).textContent = "now";
    let points = 0;
    let drawn = 0;
    legend.replaceChildren();
    for (const s of series) {
      const defined = s.points.filter(([, v]) => v !== null);
      points += defined.length;
      if (defined.length) drawn += 1;
      // Polylines broken where a window had no lookups.
      let run = [];
      const flush = () => {
        if (run.length > 1) {
          el("polyline", {
            points: run.join(" "), class: "series", stroke: s.colour,
            "stroke-width": s.width || 2, "stroke-dasharray": s.dashed ? "5 3" : "none",
          }, svg);
        }
        run = [];
      };
      for (const [t, v] of s.points) {
        if (v === null) { flush(); continue; }
        run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      }
      flush();
      for (const [t, v] of defined) {
        el("circle", { cx: x(t), cy: y(v), r: 2.5, fill: s.colour }, svg);
      }
      const last = defined.length ? defined[defined.length - 1][1] : null;
      legendItem(legend, s.colour, s.name, last === null ? "no lookups" : pct(last));
    }
    if (!points) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg).textContent =
        "no cache lookups yet: send some requests";
    }
    container.replaceChildren(svg);
    container.dataset.points = String(points);
    container.dataset.series = String(drawn);
  }

  function renderResidency(data) {
    const replicas = data.replicas;
    const requests = {};
    for (const row of data.top_adapters) requests[row.adapter] = row.requests;
    const best = {}; // replica id -> adapter key -> tier
    const holders = {};
    for (const r of replicas) {
      best[r.replica_id] = {};
      const residency = r.residency || {};
      // Worst first, so the best tier holding a key is the one left.
      for (const tier of ["disk", "host", "loading", "gpu"]) {
        for (const key of residency[tier] || []) {
          best[r.replica_id][key] = tier;
          holders[key] = (holders[key] || 0) + 1;
        }
      }
    }
    const adapterOf = (key) => key.split("@")[0];
    const keys = Object.keys(holders).sort((a, b) =>
      (requests[adapterOf(b)] || 0) - (requests[adapterOf(a)] || 0) ||
      holders[b] - holders[a] || a.localeCompare(b)).slice(0, MAX_ADAPTER_COLUMNS);
    const container = $("residency");
    let cells = 0;
    if (!keys.length || !replicas.length) {
      container.replaceChildren(emptyState(replicas.length
        ? "no adapter is resident on any replica yet"
        : "no replica has reported yet"));
    } else {
      const table = document.createElement("table");
      const head = table.createTHead().insertRow();
      head.appendChild(document.createElement("th"));
      for (const key of keys) {
        const th = document.createElement("th");
        th.className = "adapter";
        th.title = `${key} · ${requests[adapterOf(key)] || 0} requests`;
        const label = document.createElement("div");
        label.textContent = key;
        th.appendChild(label);
        head.appendChild(th);
      }
      const body = table.createTBody();
      for (const r of replicas) {
        const row = body.insertRow();
        const th = document.createElement("th");
        th.textContent = shortId(r.replica_id);
        th.title = r.replica_id;
        row.appendChild(th);
        for (const key of keys) {
          const td = row.insertCell();
          const tier = best[r.replica_id][key];
          td.className = tier ? `cell tier-${tier}` : "cell";
          td.dataset.tier = tier || "none";
          td.title = `${shortId(r.replica_id)} · ${key}: ${tier || "not resident"}`;
          if (tier) cells += 1;
        }
      }
      container.replaceChildren(table);
    }
    container.dataset.cells = String(cells);
    container.dataset.replicas = String(replicas.length);
    container.dataset.adapters = String(keys.length);
    const legend = $("residency-legend");
    legend.replaceChildren();
    for (const tier of ["gpu", "host", "disk", "loading"]) {
      legendItem(legend, TIER_COLOURS[tier], tier === "gpu" ? "GPU slot" : tier, "");
    }
  }

  function renderLatency(replicas) {
    const rows = [];
    for (const [step, label] of LOAD_STEPS) {
      for (const r of replicas) {
        const s = (r.loads || {})[step];
        if (s && s.count > 0) rows.push({ label: `${label} · ${shortId(r.replica_id)}`, ...s });
      }
    }
    const container = $("latency");
    container.dataset.bars = String(rows.length);
    if (!rows.length) {
      container.replaceChildren(emptyState("no adapter has been loaded yet"));
      return;
    }
    const W = 600, L = 150, R = 190, rowH = 22;
    const H = rows.length * rowH + 20;
    const max = Math.max(...rows.map((row) => row.p99_s)) || 1;
    const x = (s) => L + (s / max) * (W - L - R);
    const svg = svgRoot(W, H);
    rows.forEach((row, i) => {
      const y = 4 + i * rowH;
      el("text", { x: 0, y: y + 13 }, svg).textContent = row.label;
      el("rect", { x: L, y: y + 2, width: Math.max(1, x(row.p99_s) - L), height: 14,
        fill: TIER_COLOURS.host, "fill-opacity": 0.25 }, svg);
      el("rect", { x: L, y: y + 2, width: Math.max(1, x(row.p50_s) - L), height: 14,
        fill: TIER_COLOURS.host }, svg);
      el("line", { x1: x(row.mean_s), x2: x(row.mean_s), y1: y, y2: y + 18,
        stroke: TIER_COLOURS.overall, "stroke-width": 2 }, svg);
      el("text", { x: W - R + 8, y: y + 13 }, svg).textContent =
        `p50 ${ms(row.p50_s)} · p99 ${ms(row.p99_s)} · n=${row.count}`;
    });
    el("text", { x: L, y: H - 2 }, svg).textContent = "0";
    el("text", { x: W - R, y: H - 2, "text-anchor": "end" }, svg).textContent = ms(max);
    container.replaceChildren(svg);
  }

  function renderServedFrom(replicas) {
    const sum = (tier, field) => replicas.reduce(
      (total, r) => total + (((r.tiers || {})[tier] || {})[field] || 0), 0);
    const host = sum("host", "hits");
    const disk = sum("disk", "hits");
    // Requests that reached no tier went to the object store; the remaining GPU
    // misses joined a load another request had started.
    const store = Math.max(0, sum("host", "misses") - disk);
    const joined = Math.max(0, sum("gpu", "misses") - host - sum("host", "misses"));
    const parts = [
      ["GPU slot", TIER_COLOURS.gpu, sum("gpu", "hits")],
      ["host", TIER_COLOURS.host, host],
      ["disk", TIER_COLOURS.disk, disk],
      ["object store", TIER_COLOURS.store, store],
      ["joined a load", TIER_COLOURS.joined, joined],
    ];
    const total = parts.reduce((t, [, , n]) => t + n, 0);
    const container = $("served-from");
    const legend = $("served-from-legend");
    legend.replaceChildren();
    container.dataset.total = String(total);
    if (!total) {
      container.replaceChildren(emptyState("no requests served yet"));
      return;
    }
    const W = 560, H = 28;
    const svg = svgRoot(W, H);
    let at = 0;
    for (const [name, colour, n] of parts) {
      const width = (n / total) * W;
      if (width > 0) el("rect", { x: at, y: 2, width, height: H - 4, fill: colour }, svg);
      at += width;
      legendItem(legend, colour, name, `${n} (${pct(n / total)})`);
    }
    container.replaceChildren(svg);
  }

  function renderRouting(routing) {
    const container = $("routing");
    const entries = routing ? Object.entries(routing) : [];
    container.dataset.state = entries.length ? "data" : "empty";
    if (!entries.length) {
      container.replaceChildren(emptyState(
        "no placement reported yet by this ingress replica's router; the bar above " +
        "shows where requests ended up"));
      return;
    }
    entries.sort(([a, m], [b, n]) => n - m || a.localeCompare(b));
    renderBars(container, entries.map(([name, n]) => ({ name, requests: n })), "name");
  }

  function renderBars(container, rows, nameField) {
    container.dataset.rows = String(rows.length);
    container.dataset.limits = String(rows.filter((row) => row.limits).length);
    if (!rows.length) {
      container.replaceChildren(emptyState("no requests yet"));
      return;
    }
    const max = Math.max(...rows.map((row) => row.requests)) || 1;
    const children = rows.map((row) => {
      const div = document.createElement("div");
      div.className = "row";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = row[nameField];
      name.title = row[nameField];
      const svg = svgRoot(200, 14);
      svg.setAttribute("preserveAspectRatio", "none");
      el("rect", { x: 0, y: 1, width: Math.max(0.5, (row.requests / max) * 200), height: 12,
        fill: TIER_COLOURS.host }, svg);
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = String(row.requests);
      div.append(name, svg, count);
      if (row.origin) {
        // Where the adapter's latest version came from: pushed by its tenant or trained here.
        const origin = document.createElement("span");
        origin.className = `origin origin-${row.origin}`;
        origin.textContent = row.origin;
        div.append(origin);
      }
      if (row.limits) {
        // The tenant's effective request limits; highlighted where they are its own.
        const limits = document.createElement("span");
        limits.className = row.own_limits ? "limits limits-own" : "limits";
        limits.textContent = limitsText(row.limits);
        limits.title = row.own_limits ? "this tenant's own limits" : "the service defaults";
        div.append(limits);
      }
      return div;
    });
    container.replaceChildren(...children);
  }

  function limitsText(limits) {
    const shown = (value, unit) => (value === null ? `∞ ${unit}` : `${compact(value)} ${unit}`);
    return [shown(limits.requests_per_s, "req/s"), shown(limits.tokens_per_min, "tok/min"),
      shown(limits.max_in_flight, "in flight")].join(" · ");
  }

  function compact(n) {
    if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
    if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
    return String(+n.toFixed(2));
  }

  function renderStorage(data) {
    const s = data.storage;
    const base = data.base_model;
    const tiles = [
      ["tenants", String(s.tenants), ""],
      ["adapters", String(s.adapters), `${s.versions} versions · ${s.trained} trained here`],
      ["stored", bytes(s.bytes), "all live versions"],
      ["base model", base.bytes === null ? "—" : bytes(base.bytes),
        (!base.quantization || base.quantization === "none" ? base.id :
          `${base.id}, ${base.quantization} (${bytes(base.full_bytes)} unquantized)`) +
          (base.engine ? ` · engine ${base.engine}` : "")],
      ["as full fine-tuned copies", s.full_copies_bytes === null ? "—" : bytes(s.full_copies_bytes),
        `${s.adapters} × the unquantized base model`],
      ["saved", s.saved_bytes === null ? "—" : bytes(s.saved_bytes),
        s.saved_bytes === null || !s.bytes ? "" :
          `${(s.full_copies_bytes / s.bytes).toFixed(1)}× smaller`],
    ];
    const container = $("storage");
    container.replaceChildren(...tiles.map(([label, number, sub], i) => {
      const tile = document.createElement("div");
      tile.className = i === tiles.length - 1 ? "tile saving" : "tile";
      for (const [cls, text] of [["label", label], ["number", number], ["sub", sub]]) {
        const div = document.createElement("div");
        div.className = cls;
        div.textContent = text;
        tile.appendChild(div);
      }
      return tile;
    }));
    for (const field of ["adapters", "trained", "versions", "bytes"]) {
      container.dataset[field] = String(s[field]);
    }
    container.dataset.fullCopiesBytes = String(s.full_copies_bytes);
    container.dataset.savedBytes = String(s.saved_bytes);
  }

  function renderReplicas(replicas) {
    const body = $("replicas").tBodies[0];
    body.replaceChildren();
    for (const r of replicas) {
      const res = r.residency || {};
      const errors = Object.values(r.load_errors || {}).reduce((a, b) => a + b, 0);
      const cells = [shortId(r.replica_id), r.in_flight, r.queued, r.requests_served,
        `${(res.gpu || []).length} / ${r.gpu_slots}`, (res.host || []).length,
        (res.disk || []).length, (res.loading || []).length, errors];
      const row = body.insertRow();
      for (const value of cells) row.insertCell().textContent = String(value);
    }
    $("replicas").dataset.rows = String(replicas.length);
  }

  // ---------------------------------------------------------------- helpers

  function svgRoot(width, height) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("role", "img");
    return svg;
  }

  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    parent.appendChild(node);
    return node;
  }

  function legendItem(legend, colour, name, value) {
    const item = document.createElement("span");
    item.className = "item";
    const swatch = svgRoot(12, 12);
    swatch.setAttribute("width", "12");
    swatch.setAttribute("height", "12");
    el("rect", { x: 0, y: 0, width: 12, height: 12, rx: 2, fill: colour }, swatch);
    const label = document.createElement("span");
    label.textContent = name;
    item.append(swatch, label);
    if (value) {
      const v = document.createElement("span");
      v.className = "value";
      v.textContent = value;
      item.appendChild(v);
    }
    legend.appendChild(item);
  }

  function emptyState(message) {
    const div = document.createElement("div");
    div.className = "empty";
    div.textContent = message;
    return div;
  }

  function shortId(id) {
    return id.length > 10 ? id.slice(0, 8) : id;
  }

  function pct(v) {
    return `${(v * 100).toFixed(1)}%`;
  }

  function ms(seconds) {
    return seconds >= 1 ? `${seconds.toFixed(2)} s` : `${(seconds * 1000).toFixed(1)} ms`;
  }

  function ago(t) {
    const s = Math.round((Date.now() - t) / 1000);
    return s > 0 ? `${s}s ago` : "";
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = n;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i && v < 10 ? 1 : 0)} ${units[i]}`;
  }

  poll();
})();
