// The device console: plain JS, no framework, nothing loaded from outside this node.
// Every call carries the token typed into the page (kept in sessionStorage only).
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const LATENCY_WINDOW_MS = 60000; // "recent latency": requests answered in the last minute
  const TOKEN_KEY = "aisrv.console.token";
  const COLOURS = ["#ff1744", "#00b0ff", "#ffc400", "#00e676", "#d500f9", "#ff9100"];
  // Four numbers under a key like these are scores or features, not a box.
  const NOT_A_BOX = /scor|prob|logit|conf|feat|embed|vec|mean|std|hist/i;
  const LABEL_KEYS = ["label", "name", "class", "category", "cls"];
  const SCORE_KEYS = ["score", "confidence", "conf", "prob", "probability"];

  const auth = document.body.dataset.auth || "none"; // none | token | admin (set by the node)
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let timer = null;
  let polling = false;
  let samples = []; // {t, latency: {model: {sum, count}}} from /metrics, newest last
  let state = null;

  // --- talking to the node -------------------------------------------------------------

  async function call(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const options = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const text = await response.text();
    let data = null;
    if ((response.headers.get("Content-Type") || "").indexOf("json") >= 0) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!response.ok) {
      const error = new Error((data && data.message) || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return data !== null ? data : text;
  }

  function needsToken() {
    return auth === "token" && !token;
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    clearTimeout(timer);
    if (needsToken()) {
      banner("This node asks for a token: type it at the top right.", false);
      $("node-line").textContent = "waiting for a token";
      return;
    }
    if (polling) return;
    polling = true;
    try {
      const got = await Promise.all([call("GET", "/console/api/state"), call("GET", "/metrics")]);
      state = got[0];
      remember(parseMetrics(got[1]));
      banner("");
      render();
      schedule();
    } catch (error) {
      if (error.status === 401) {
        // Polling stops: a wrong token would only be refused again every few seconds.
        banner("The node refused the token (" + error.message + "). Type the right one.", true);
        $("node-line").textContent = "token refused";
      } else {
        banner("The node does not answer: " + error.message + " (retrying)", true);
        schedule();
      }
    } finally {
      polling = false;
    }
  }

  // --- /metrics: queue depth and latency -----------------------------------------------

  function parseMetrics(text) {
    const latency = {};
    const queues = {};
    const line = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
    for (const raw of String(text).split("\n")) {
      if (!raw || raw[0] === "#") continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      const pair = /(\w+)="((?:[^"\\]|\\.)*)"/g;
      let p;
      while ((p = pair.exec(m[2] || "")) !== null) labels[p[1]] = p[2];
      const value = Number(m[3]);
      const model = labels.model || "";
      if (m[1] === "aisrv_request_seconds_sum" || m[1] === "aisrv_request_seconds_count") {
        const entry = latency[model] || (latency[model] = { sum: 0, count: 0 });
        entry[m[1].endsWith("_sum") ? "sum" : "count"] += value; // every door together
      } else if (m[1] === "aisrv_queue_depth") {
        queues[model] = value;
      }
    }
    return { latency: latency, queues: queues };
  }

  function remember(parsed) {
    const now = Date.now();
    samples.push({ t: now, latency: parsed.latency, queues: parsed.queues });
    // Keep one sample at or before the window's start as the baseline.
    while (samples.length > 2 && samples[1].t <= now - LATENCY_WINDOW_MS) samples.shift();
  }

  function latencyText(model) {
    if (!model || !samples.length) return "—";
    const last = samples[samples.length - 1].latency[model] || { sum: 0, count: 0 };
    const first = samples[0].latency[model] || { sum: 0, count: 0 };
    const n = last.count - first.count;
    const seconds = Math.round((samples[samples.length - 1].t - samples[0].t) / 1000);
    if (n > 0) {
      return ms((last.sum - first.sum) / n) + " avg · " + n + " req in " + seconds + " s";
    }
    if (last.count > 0) return ms(last.sum / last.count) + " avg · " + last.count + " req since start";
    return "no requests yet";
  }

  function ms(seconds) {
    const value = seconds * 1000;
    return (value < 10 ? value.toFixed(1) : Math.round(value)) + " ms";
  }

  // --- rendering -------------------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function button(text, action) {
    const node = el("button", text);
    node.type = "button";
    node.addEventListener("click", async function () {
      node.disabled = true;
      try { await action(); } finally { node.disabled = false; }
    });
    return node;
  }

  function banner(text, bad) {
    const node = $("banner");
    node.hidden = !text;
    node.textContent = text || "";
    node.className = "banner" + (bad ? " bad" : "");
  }

  // Outcome of the user's last action (load, unload): stays until the next one.
  function notice(text, bad) {
    const node = $("notice");
    node.hidden = !text;
    node.textContent = text || "";
    node.className = "banner" + (bad ? " bad" : "");
  }

  function render() {
    const s = state;
    $("node-line").textContent = (s.node ? "node " + s.node + " · " : "") + "version " + s.version +
      (s.compiled ? " (compiled)" : "");
    const facts = $("node-facts");
    facts.replaceChildren();
    const r = s.resources || {};
    const items = [["version", s.version + (s.compiled ? " · compiled" : "")],
      ["node daemon", s.alive ? "running" : "not answering"],
      ["CPU", pct(r.cpu)], ["memory", pct(r.mem)], ["GPU", pct(r.gpu)], ["disk", pct(r.dsk)],
      ["REST door backend", s.rest_bid || "—"]];
    for (const item of items) {
      const div = el("div");
      div.append(el("dt", item[0]), el("dd", item[1]));
      facts.append(div);
    }
    renderBackends(s);
    renderModels(s);
    renderTestChoices(s);
  }

  function pct(value) {
    return value === undefined || value === "N/A" ? "N/A" : value + " %";
  }

  function renderBackends(s) {
    const body = $("backends").tBodies[0];
    body.replaceChildren();
    $("backends-empty").hidden = s.backends.length > 0;
    for (const b of s.backends) {
      const row = el("tr");
      row.dataset.bid = b.bid;
      const model = el("td");
      if (b.model) {
        model.append(el("span", b.model.name), el("span", " v" + b.model.version, "muted"));
        model.title = b.model.implhash + "/" + b.model.version;
      } else {
        model.append(el("span", "—", "muted"));
      }
      const stateCell = el("td", null, "state");
      stateCell.append(el("span", b.state_name, "state-" + b.state_name.replace(/ /g, "-")),
        el("span", " · " + (b.switch.status || ""), "muted"));
      const error = b.switch.error || (b.state_name === "error" ? b.msg : "");
      if (error) stateCell.append(el("div", error, "error"));
      const procs = el("td");
      for (const p of b.processes) {
        procs.append(el("div", p.n + ": " + p.name, "proc-" + p.name.replace(/ /g, "-")));
      }
      const depth = b.serving && s.queues[b.serving] !== undefined ? s.queues[b.serving] : "—";
      const z = b.sizing || {};
      const sizing = z.processes ? z.processes + " proc × " + z.threads + " thr, batch " +
        z.batchsize + (z.batch_cap ? " (cap " + z.batch_cap + ")" : "") : "—";
      const actions = el("td");
      actions.append(button("Unload", () => unload(b.bid)));
      row.append(el("td", b.bid, "mono"), model, el("td", b.impl, "mono"), stateCell, procs,
        el("td", depth, "queue"), el("td", latencyText(b.serving), "latency"), el("td", sizing),
        actions);
      body.append(row);
    }
  }

  function renderModels(s) {
    const body = $("models").tBodies[0];
    body.replaceChildren();
    $("models-empty").hidden = s.models.length > 0;
    for (const m of s.models) {
      const on = s.backends.filter((b) => b.model && b.model.implhash === m.implhash &&
        b.model.version === m.version).map((b) => b.bid);
      const row = el("tr");
      row.dataset.fullhash = m.fullhash;
      const hash = el("td", m.implhash.slice(0, 12) + "…", "mono");
      hash.title = m.implhash;
      const actions = el("td");
      actions.append(button("Load", () => load(m)));
      row.append(el("td", m.name), el("td", m.version), el("td", m.impl, "mono"), hash,
        el("td", m.labels), el("td", on.length ? on.join(", ") : "—"), actions);
      body.append(row);
    }
  }

  function renderTestChoices(s) {
    const select = $("test-bid");
    const wanted = s.backends.map((b) => b.bid + "|" + (b.model ? b.model.name : "")).join(",");
    if (select.dataset.shown === wanted) return; // keep the user's choice between refreshes
    const chosen = select.value || s.rest_bid;
    select.replaceChildren();
    for (const b of s.backends) {
      const option = el("option", b.bid + (b.model ? " · " + b.model.name : ""));
      option.value = b.bid;
      select.append(option);
    }
    if (s.backends.some((b) => b.bid === chosen)) select.value = chosen;
    select.dataset.shown = wanted;
  }

  // --- actions ---------------------------------------------------------------------

  async function load(model) {
    try {
      const answer = await call("POST", "/api/v1alpha/switch",
        { btype: model.impl.split(".")[0], model: model.implhash + "/" + model.version });
      notice("Loading " + model.name + " v" + model.version + " on backend " + answer.bid + ".");
    } catch (error) {
      notice("Load failed: " + error.message, true);
    }
    refresh();
  }

  async function unload(bid) {
    try {
      await call("POST", "/console/api/unload", { bid: bid });
      notice("Backend " + bid + " unloaded.");
    } catch (error) {
      notice("Unload failed: " + error.message, true);
    }
    refresh();
  }

  // --- the test box ----------------------------------------------------------------

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
      reader.onerror = () => reject(new Error("the file cannot be read"));
      reader.readAsDataURL(file);
    });
  }

  function kindOf(file) {
    const dot = file.name.lastIndexOf(".");
    const ext = dot >= 0 ? file.name.slice(dot + 1).toLowerCase() : "";
    if (/^[a-z0-9]+$/.test(ext)) return ext;
    const sub = (file.type || "").split("/")[1] || "";
    return /^[a-z0-9]+$/.test(sub) ? sub : "";
  }

  async function runTest(event) {
    event.preventDefault();
    const file = $("test-file").files[0];
    const status = $("test-status");
    if (!file) { status.textContent = "pick an image first"; return; }
    const bid = $("test-bid").value;
    status.textContent = "running…";
    $("test-run").disabled = true;
    const started = performance.now();
    try {
      const answer = await call("POST", "/console/api/detect",
        { bid: bid, base64: await readBase64(file), type: kindOf(file) });
      $("test-result").textContent = JSON.stringify(answer.result, null, 2);
      status.textContent = "answered in " + ms((performance.now() - started) / 1000) +
        " by backend " + answer.bid;
      await draw(file, findBoxes(answer.result));
    } catch (error) {
      $("test-result").textContent = error.message;
      status.textContent = "failed";
      await draw(file, []);
    } finally {
      $("test-run").disabled = false;
      refresh();
    }
  }

  // Every [x1, y1, x2, y2] list anywhere in the result, with a label from its object.
  function findBoxes(result) {
    const found = [];
    (function walk(value, owner, key, depth) {
      if (value === null || typeof value !== "object" || depth > 32) return;
      if (Array.isArray(value)) {
        if (isBox(value) && !NOT_A_BOX.test(key)) {
          found.push({ box: value.map(Number), label: labelOf(owner) });
          return;
        }
        for (const item of value) walk(item, null, key, depth + 1);
        return;
      }
      for (const k of Object.keys(value)) walk(value[k], value, k, depth + 1);
    })(result, null, "", 0);
    return found;
  }

  function isBox(list) {
    return list.length === 4 && list.every((v) => typeof v === "number" && isFinite(v)) &&
      list[2] > list[0] && list[3] > list[1];
  }

  function labelOf(owner) {
    if (!owner) return "";
    const label = LABEL_KEYS.map((k) => owner[k]).find((v) => typeof v === "string" ||
      typeof v === "number");
    const score = SCORE_KEYS.map((k) => owner[k]).find((v) => typeof v === "number");
    return [label, score === undefined ? undefined : score.toFixed(2)]
      .filter((v) => v !== undefined).join(" ");
  }

  function loadImage(file) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(file);
      const image = new Image();
      image.onload = () => resolve({ image: image, url: url });
      image.onerror = () => { URL.revokeObjectURL(url); reject(new Error("not an image")); };
      image.src = url;
    });
  }

  async function draw(file, boxes) {
    const canvas = $("test-canvas");
    const note = $("test-boxes");
    let loaded;
    try {
      loaded = await loadImage(file);
    } catch (error) {
      canvas.hidden = true;
      note.textContent = "the browser cannot show this file";
      return;
    }
    const w = loaded.image.naturalWidth;
    const h = loaded.image.naturalHeight;
    canvas.width = w;
    canvas.height = h;
    canvas.style.width = Math.max(w, Math.min(480, w * 8)) + "px"; // small inputs shown larger
    const ctx = canvas.getContext("2d");
    ctx.drawImage(loaded.image, 0, 0);
    URL.revokeObjectURL(loaded.url);
    // Coordinates all within [0, 1]: relative to the image's size.
    const relative = boxes.length > 0 && boxes.every((b) => b.box.every((v) => v >= 0 && v <= 1));
    const line = Math.max(1, Math.round(Math.min(w, h) / 150));
    const font = Math.max(8, Math.round(Math.min(w, h) / 20));
    ctx.font = font + "px sans-serif";
    ctx.textBaseline = "top";
    boxes.forEach((found, i) => {
      const b = relative ? [found.box[0] * w, found.box[1] * h, found.box[2] * w, found.box[3] * h]
        : found.box;
      const colour = COLOURS[i % COLOURS.length];
      ctx.strokeStyle = colour;
      ctx.lineWidth = line;
      const off = line % 2 ? 0.5 : 0; // an odd-width line centred on a pixel: crisp, not blurred
      ctx.strokeRect(b[0] + off, b[1] + off, b[2] - b[0], b[3] - b[1]);
      if (found.label) {
        const width = ctx.measureText(found.label).width + 4;
        const y = b[1] - font - 2 >= 0 ? b[1] - font - 2 : b[1];
        ctx.fillStyle = colour;
        ctx.fillRect(b[0], y, width, font + 2);
        ctx.fillStyle = "#000";
        ctx.fillText(found.label, b[0] + 2, y + 1);
      }
    });
    canvas.dataset.boxes = String(boxes.length);
    canvas.hidden = false;
    note.textContent = boxes.length ? boxes.length + " box" + (boxes.length > 1 ? "es" : "") +
      " drawn" : "no boxes in the result";
  }

  // --- start -----------------------------------------------------------------------

  function setToken(value) {
    token = value;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    $("token").placeholder = token ? "token set" : "auth token";
    samples = [];
    refresh();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
  });
  $("token-clear").addEventListener("click", () => setToken(""));
  $("test-form").addEventListener("submit", runTest);
  if (auth === "none") $("token-form").hidden = true;
  if (token) $("token").placeholder = "token set";
  refresh();
})();
