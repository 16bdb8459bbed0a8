// The monitor's dashboard: reads the JSON API (/v1/monitor/...) and draws it with plain DOM
// and inline SVG. No framework and no CDN: the service often runs on machines without internet.
// Text from the API only ever goes into textContent or attribute values, never into markup.
"use strict";

(() => {
  const KEY_STORE = "lmforge.monitor.key"; // sessionStorage: gone when the tab closes
  const DOCUMENT_LIMIT = 20;
  const TEXT_CHARS = 160;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const UNITS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };
  // Candidate spacings of the time axis's ticks; the smallest giving at most MAX_TICKS wins.
  const TICK_STEPS = ["1m", "5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d", "2d", "7d",
    "14d", "30d", "90d", "365d"].map(parseDuration);
  const MAX_TICKS = 8;

  const $ = (id) => document.getElementById(id);
  const state = { timer: null, busy: false, again: false, loads: 0 };

  class Unauthorized extends Error {}

  // --- the API ------------------------------------------------------------------------------
  async function api(path, method = "GET") {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { method, headers, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw new Error(`${path.split("?")[0]}: ${response.status} ${message}`);
    }
    return body;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.set(name, value);
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  // --- times --------------------------------------------------------------------------------
  function parseDuration(text) {
    const match = /^(\d+)([smhdw])$/.exec(String(text).trim());
    return match ? Number(match[1]) * UNITS[match[2]] : NaN;
  }

  // A datetime-local input's value read as UTC ("2024-05-06T03:00" -> "...T03:00:00Z").
  function inputToIso(value) {
    if (!value) return "";
    return value.length === 16 ? `${value}:00Z` : `${value}Z`;
  }

  // "2024-05-06T03:00:00Z" -> "2024-05-06 03:00" (minutes) or "... 03:00:00" (seconds).
  function showTime(iso, seconds = false) {
    if (!iso) return "—";
    return iso.slice(0, seconds ? 19 : 16).replace("T", " ");
  }

  function tickLabel(ms, step) {
    const iso = new Date(ms).toISOString();
    if (step >= UNITS.d) return iso.slice(0, 10);
    return `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
  }

  function showNumber(value, digits = 3) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value); // "inf" from an EWMA score
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(digits);
  }

  // --- the page's state ---------------------------------------------------------------------
  function setStatus(kind, text) {
    const status = $("status");
    status.dataset.state = kind;
    status.textContent = text;
  }

  function filters() {
    return {
      window: $("window").value,
      topic: $("topic").value,
      source: $("source").value,
      since: inputToIso($("since").value),
      until: inputToIso($("until").value),
      order: $("document-order").value,
    };
  }

  // Replace a select's options only when the list changed (an open dropdown stays open);
  // keep the chosen value when it is still offered, else take `fallback`.
  function fillSelect(select, options, fallback) {
    const chosen = select.value;
    const signature = JSON.stringify(options);
    if (select.dataset.options !== signature) {
      select.replaceChildren(
        ...options.map(([value, label]) => {
          const option = document.createElement("option");
          option.value = value;
          option.textContent = label;
          return option;
        }),
      );
      select.dataset.options = signature;
    }
    const values = options.map(([value]) => value);
    select.value = values.includes(chosen) && chosen !== "" ? chosen : fallback;
  }

  function el(tag, text, attributes = {}) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- refresh ------------------------------------------------------------------------------
  async function refresh() {
    if (state.busy) {
      state.again = true; // a filter changed mid-load: load once more when this one ends
      return;
    }
    state.busy = true;
    clearTimeout(state.timer);
    if (!state.loads) setStatus("loading", "Loading…");
    document.body.classList.add("refreshing");
    try {
      const [topics, sources] = await Promise.all([
        api(`/v1/monitor/topics${query({ window: $("window").value })}`),
        api("/v1/monitor/sources"),
      ]);
      fillSelect($("window"), topics.windows.map((w) => [w, w]), topics.window);
      const names = topics.topics.map((t) => t.topic);
      fillSelect(
        $("topic"),
        topics.topics.map((t) => [t.topic, `${t.topic} (${t.volume})`]),
        names.includes("all") ? "all" : names[0] || "",
      );
      fillSelect(
        $("source"),
        [["", "every source"], ...sources.sources.map((s) => [s.source, s.source])],
        "",
      );
      const f = filters();
      const range = { since: f.since, until: f.until };
      // The alert list shows every topic's alerts under 'all' (the API reads topic=all as
      // the 'all' aggregate only), one topic's under that topic.
      const alertTopic = f.topic === "all" ? "" : f.topic;
      const [trends, alerts, documents] = await Promise.all([
        f.topic
          ? api(`/v1/monitor/trends${query({ window: f.window, topic: f.topic, ...range })}`)
          : { window: f.window, rows: [] },
        api(`/v1/monitor/alerts${query({ topic: alertTopic, ...range })}`),
        api(
          `/v1/monitor/documents${query({
            topic: f.topic,
            source: f.source,
            sentiment: "negative",
            order: f.order,
            limit: DOCUMENT_LIMIT,
            ...range,
          })}`,
        ),
      ]);
      const shaded = alerts.alerts.filter((a) => a.topic === f.topic && a.window === f.window);
      renderChart(trends.rows, shaded, f.window);
      $("trend-caption").textContent = `${f.topic || "no topic"} · ${f.window} windows`;
      renderAlerts(alerts.alerts);
      renderDocuments(documents.documents);
      hideKeyForm();
      state.loads += 1;
      $("status").dataset.loads = String(state.loads);
      // Milliseconds from navigation to the first full render (read by the browser test).
      if (state.loads === 1) $("status").dataset.firstLoadMs = String(Math.round(performance.now()));
      setStatus("loaded", `Loaded ${new Date().toISOString().slice(11, 19)} UTC`);
    } catch (error) {
      if (error instanceof Unauthorized) {
        showKeyForm(true);
      } else {
        setStatus("error", `Error: ${error.message}`);
      }
    } finally {
      state.busy = false;
      document.body.classList.remove("refreshing");
      if (state.again) {
        state.again = false;
        refresh();
      } else {
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    const seconds = Number($("interval").value);
    if (!$("auto-refresh").checked || !$("key-form").hidden || !(seconds >= 1)) return;
    state.timer = setTimeout(() => (document.hidden ? schedule() : refresh()), seconds * 1000);
  }

  // --- the API key --------------------------------------------------------------------------
  function showKeyForm(refused) {
    const hadKey = sessionStorage.getItem(KEY_STORE) !== null;
    if (refused) {
      sessionStorage.removeItem(KEY_STORE); // a refused key is not sent again
      setStatus("unauthorized", "An API key is needed");
    }
    // A refusal's message stays through the keyless retries that follow it.
    if (refused && hadKey) $("key-error").textContent = "The key was refused.";
    if (!refused) $("key-error").textContent = "";
    $("key-form").hidden = false;
    document.body.classList.toggle("locked", refused);
    clearTimeout(state.timer);
    $("key-input").focus();
  }

  function hideKeyForm() {
    $("key-form").hidden = true;
    $("key-error").textContent = "";
    document.body.classList.remove("locked");
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-input").value = "";
    hideKeyForm();
    refresh();
  }

  // --- the trend chart ----------------------------------------------------------------------
  // The volume axis: a step of 1, 2 or 5 times a power of ten (at least 1: volumes are
  // counts) giving at most five intervals, and the top tick at or above the largest volume.
  function volumeTicks(largest) {
    const steps = [];
    for (let power = 1; power <= 1e9; power *= 10) steps.push(power, 2 * power, 5 * power);
    const step = steps.find((s) => Math.ceil(largest / s) <= 5) || steps.at(-1);
    const count = Math.max(1, Math.ceil(largest / step));
    return Array.from({ length: count + 1 }, (_, i) => i * step);
  }

  function renderChart(rows, alerts, windowName) {
    const chart = $("trend-chart");
    const width = 960;
    const height = 250;
    const margin = { left: 52, right: 52, top: 24, bottom: 40 };
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const bottom = height - margin.bottom;
    chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    chart.dataset.window = windowName;
    chart.dataset.bars = String(rows.length);
    chart.replaceChildren();
    if (!rows.length) {
      chart.append(
        svg("text", { x: width / 2, y: height / 2, class: "empty" }, "no windows in this range"),
      );
      return;
    }
    const size = parseDuration(windowName) || 3600e3;
    const starts = rows.map((r) => Date.parse(r.window_start));
    const first = Math.min(...starts);
    const last = Math.max(...starts) + size;
    const x = (ms) => margin.left + ((ms - first) / (last - first)) * plotWidth;
    const volumes = volumeTicks(Math.max(...rows.map((r) => r.volume)));
    const top = volumes.at(-1);
    const yVolume = (v) => bottom - (v / top) * plotHeight;
    const yShare = (s) => bottom - s * plotHeight;

    // Alert windows, behind everything.
    for (const alert of alerts) {
      const from = Math.max(Date.parse(alert.window_start), first);
      const to = Math.min(Date.parse(alert.window_end), last);
      if (to <= from) continue;
      const span = svg("rect", {
        class: `alert-span ${alert.state}`,
        x: x(from),
        y: margin.top,
        width: Math.max(2, x(to) - x(from)),
        height: plotHeight,
        "data-alert-id": alert.id,
        "data-state": alert.state,
      });
      const label = `alert ${alert.rule} (${alert.state}) ${showTime(alert.window_start)} UTC`;
      span.append(svg("title", {}, label));
      // A tab above the plot: a one-hour span of a 90-day chart is thinner than a pixel.
      const tab = svg("rect", {
        class: `alert-tab ${alert.state}`,
        x: (x(from) + x(to)) / 2 - 3,
        y: margin.top - 7,
        width: 6,
        height: 6,
      });
      tab.append(svg("title", {}, label));
      chart.append(span, tab);
    }

    // Grid and the two value axes: volume on the left, negative share on the right.
    const axes = svg("g", { class: "axis" });
    for (const volume of volumes) {
      const y = yVolume(volume);
      axes.append(
        svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y, y2: y }),
        svg("text", { x: margin.left - 6, y: y + 4, "text-anchor": "end" }, showCount(volume)),
      );
    }
    for (let share = 0; share <= 1; share += 0.25) {
      axes.append(
        svg("text", { x: width - margin.right + 6, y: yShare(share) + 4 }, `${share * 100}%`),
      );
    }
    axes.append(
      svg("text", { x: margin.left - 6, y: 12, class: "axis-title", "text-anchor": "end" },
        "volume"),
      svg("text", { x: width - 2, y: 12, class: "axis-title", "text-anchor": "end" },
        "negative"),
    );

    // Time ticks, aligned to UTC multiples of the step (as the windows are).
    const step = TICK_STEPS.find((s) => (last - first) / s <= MAX_TICKS) || TICK_STEPS.at(-1);
    for (let t = Math.ceil(first / step) * step; t <= last; t += step) {
      axes.append(
        svg("line", { class: "tick", x1: x(t), x2: x(t), y1: bottom, y2: bottom + 5 }),
        svg("text", { x: x(t), y: bottom + 18, "text-anchor": "middle" }, tickLabel(t, step)),
      );
    }
    axes.append(
      svg("line", { class: "baseline", x1: margin.left, x2: width - margin.right, y1: bottom,
        y2: bottom }),
      svg("text", { x: width - margin.right, y: bottom + 34, "text-anchor": "end",
        class: "axis-title" }, "time (UTC)"),
    );
    chart.append(axes);

    // Volume bars, one per stored window.
    const slot = x(first + size) - x(first);
    const gap = slot > 4 ? Math.min(2, slot * 0.15) : 0;
    const bars = svg("g", { class: "bars" });
    rows.forEach((row, i) => {
      const bar = svg("rect", {
        class: "bar",
        x: x(starts[i]) + gap / 2,
        y: yVolume(row.volume),
        width: Math.max(0.5, slot - gap),
        height: bottom - yVolume(row.volume),
        "data-start": row.window_start,
        "data-volume": row.volume,
        "data-negative-share": row.negative_share,
      });
      const share = (row.negative_share * 100).toFixed(0);
      bar.append(
        svg("title", {}, `${showTime(row.window_start)} UTC: ${row.volume} documents, ` +
          `${share}% negative`),
      );
      bars.append(bar);
    });
    chart.append(bars);

    // The negative share, as a line through the windows' centres; broken where windows are
    // missing (no documents), since a line across a gap would invent values.
    let path = "";
    rows.forEach((row, i) => {
      const gapBefore = i === 0 || starts[i] - starts[i - 1] > size;
      const point = `${x(starts[i] + size / 2).toFixed(1)},${yShare(row.negative_share).toFixed(1)}`;
      path += `${gapBefore ? "M" : "L"}${point}`;
    });
    chart.append(svg("path", { class: "share-line", d: path }));
    if (rows.length <= 200) {
      const points = svg("g", { class: "share-points" });
      rows.forEach((row, i) => {
        points.append(svg("circle", {
          class: "share-point",
          cx: x(starts[i] + size / 2),
          cy: yShare(row.negative_share),
          r: 2.5,
          "data-start": row.window_start,
          "data-share": row.negative_share,
        }));
      });
      chart.append(points);
    }
  }

  function showCount(value) {
    if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
    if (value >= 1e4) return `${+(value / 1e3).toFixed(1)}k`;
    return String(+value.toFixed(1));
  }

  // --- the tables ---------------------------------------------------------------------------
  function emptyRow(columns, text) {
    const row = el("tr", null, { class: "empty" });
    row.append(el("td", text, { colspan: columns }));
    return row;
  }

  function renderAlerts(alerts) {
    // Firing first, then the newest.
    const sorted = alerts.slice().sort((a, b) =>
      (a.state === "firing" ? 0 : 1) - (b.state === "firing" ? 0 : 1) ||
      b.fired_at.localeCompare(a.fired_at) || b.id - a.id);
    const body = $("alert-table").tBodies[0];
    const firing = alerts.filter((a) => a.state === "firing").length;
    $("alert-caption").textContent = `${alerts.length} · ${firing} firing`;
    if (!sorted.length) {
      body.replaceChildren(emptyRow(9, "no alerts in this range"));
      return;
    }
    body.replaceChildren(...sorted.map(alertRow));
  }

  function alertRow(alert) {
    const row = el("tr", null, { "data-alert-id": alert.id, "data-state": alert.state });
    if (alert.acknowledged_by) row.dataset.acknowledgedBy = alert.acknowledged_by;
    const state = el("td");
    state.append(el("span", alert.state, { class: `badge ${alert.state}` }));
    if (alert.resolved_by) state.append(el("span", ` by ${alert.resolved_by}`, { class: "by" }));
    const acknowledged = el("td", alert.acknowledged_by || "", { class: "acknowledged-by" });
    if (alert.acknowledged_at) acknowledged.title = `${showTime(alert.acknowledged_at)} UTC`;
    const actions = el("td", null, { class: "actions" });
    if (alert.state === "firing") {
      if (!alert.acknowledged_by) actions.append(actionButton(alert, "acknowledge", "Acknowledge"));
      actions.append(actionButton(alert, "resolve", "Resolve"));
    }
    row.append(
      el("td", alert.topic),
      el("td", alert.rule, { title: `${alert.metric} over ${alert.window}` }),
      el("td", showTime(alert.window_start)),
      el("td", showTime(alert.window_end)),
      el("td", showNumber(alert.value), { class: "num" }),
      el("td", showNumber(alert.baseline), { class: "num" }),
      state,
      acknowledged,
      actions,
    );
    return row;
  }

  function actionButton(alert, action, label) {
    const button = el("button", label, { type: "button", "data-action": action });
    button.addEventListener("click", async () => {
      for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
      try {
        await api(`/v1/monitor/alerts/${encodeURIComponent(alert.id)}/${action}`, "POST");
      } catch (error) {
        if (error instanceof Unauthorized) {
          showKeyForm(true);
          return;
        }
        setStatus("error", `Error: ${error.message}`);
      }
      refresh();
    });
    return button;
  }

  function renderDocuments(documents) {
    const body = $("document-table").tBodies[0];
    if (!documents.length) {
      body.replaceChildren(emptyRow(5, "no negative documents in this range"));
      return;
    }
    body.replaceChildren(...documents.map(documentRow));
  }

  function documentRow(doc) {
    const row = el("tr", null, { "data-document-id": doc.id, "data-negative": doc.negative });
    const text = el("td", null, { class: "text", title: doc.text });
    if (doc.title) text.append(el("strong", doc.title), " ");
    const snippet =
      doc.text.length > TEXT_CHARS ? `${doc.text.slice(0, TEXT_CHARS - 1)}…` : doc.text;
    if (/^https?:\/\//i.test(doc.url || "")) {
      text.append(el("a", snippet, { href: doc.url, rel: "noopener noreferrer", target: "_blank" }));
    } else {
      text.append(snippet);
    }
    row.append(
      el("td", showTime(doc.timestamp, true), { class: "time" }),
      el("td", doc.source),
      el("td", doc.topic),
      el("td", showNumber(doc.negative), { class: "num" }),
      text,
    );
    return row;
  }

  // --- start --------------------------------------------------------------------------------
  async function showMonitorName() {
    const answer = await fetch("/readyz", { cache: "no-store" }).catch(() => null);
    const body = answer && answer.ok ? await answer.json().catch(() => null) : null;
    if (body && body.monitor) {
      $("monitor-name").textContent = body.monitor;
      document.title = `${body.monitor} · lmforge monitor`;
    }
  }

  function start() {
    $("key-form").addEventListener("submit", useKey);
    $("key-change").addEventListener("click", () => showKeyForm(false));
    $("key-cancel").addEventListener("click", () => {
      hideKeyForm();
      refresh();
    });
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    for (const id of ["topic", "window", "source", "since", "until", "document-order"]) {
      $(id).addEventListener("change", refresh);
    }
    $("refresh").addEventListener("click", refresh);
    $("auto-refresh").addEventListener("change", schedule);
    $("interval").addEventListener("change", schedule);
    showMonitorName();
    refresh();
  }

  start();
})();
