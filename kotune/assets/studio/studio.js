// kotune studio: live loss curves, run polling, streamed chat, the launch form.
// Plain browser JavaScript written for kotune (no framework, nothing fetched from the network).
"use strict";

const W = JSON.parse(document.getElementById("words").textContent);
const SVG = "http://www.w3.org/2000/svg";

function post(url, body) {
  return fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-Kotune-Studio": "1"},
                     body: JSON.stringify(body)});
}

async function postJSON(url, body) {
  const res = await post(url, body);
  const data = await res.json().catch(() => ({error: "error: HTTP " + res.status}));
  if (!res.ok || data.error) throw new Error(data.error || ("error: HTTP " + res.status));
  return data;
}

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function statusBadge(badge, status) {
  badge.className = badge.className.replace(/\b(running|finished|failed|killed|stopped|done|started|pending)\b/g, "").trim() + " " + status;
  badge.dataset.status = status;
  badge.textContent = W["st_" + status] || status;
}

// ---------------------------------------------------------------- loss curve
function drawLoss(svg, history) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const train = history.filter(h => h.loss !== undefined).map(h => [h.step, h.loss]);
  const evals = history.filter(h => h.eval_loss !== undefined).map(h => [h.step, h.eval_loss]);
  const all = train.concat(evals);
  const empty = document.getElementById(svg.id.replace("loss-", "loss-empty-"));
  if (empty) empty.hidden = all.length > 0;
  svg.dataset.points = String(train.length);
  svg.dataset.evalPoints = String(evals.length);
  if (!all.length) return;
  const L = 56, R = 790, T = 14, B = 226;
  const xs = all.map(p => p[0]), ys = all.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-6) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (R - L);
  const sy = y => B - (y - y0) / (y1 - y0) * (B - T);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    svg.appendChild(el("svg:line", {x1: L, x2: R, y1: sy(y), y2: sy(y), stroke: "#e6e8eb"}));
    svg.appendChild(el("svg:text", {x: L - 6, y: sy(y) + 4, "text-anchor": "end", "font-size": 11, fill: "#57606a"}, y.toFixed(2)));
  }
  svg.appendChild(el("svg:line", {x1: L, x2: R, y1: B, y2: B, stroke: "#57606a"}));
  svg.appendChild(el("svg:text", {x: L, y: B + 18, "font-size": 11, fill: "#57606a"}, "step " + x0));
  svg.appendChild(el("svg:text", {x: R, y: B + 18, "font-size": 11, fill: "#57606a", "text-anchor": "end"}, "step " + x1));
  const line = (pts, colour, cls, dash) => {
    if (!pts.length) return;
    const d = pts.map(p => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    const attrs = {points: d, fill: "none", stroke: colour, "stroke-width": 2, class: cls, "vector-effect": "non-scaling-stroke"};
    if (dash) attrs["stroke-dasharray"] = "6 4";
    svg.appendChild(el("svg:polyline", attrs));
    for (const p of pts.length < 40 ? pts : []) svg.appendChild(el("svg:circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: colour}));
  };
  line(train, "#4e79a7", "loss-line");
  line(evals, "#e15759", "eval-line", true);
  svg.appendChild(el("svg:rect", {x: R - 200, y: T, width: 12, height: 3, fill: "#4e79a7"}));
  svg.appendChild(el("svg:text", {x: R - 184, y: T + 5, "font-size": 12}, W.train_loss));
  if (evals.length) {
    svg.appendChild(el("svg:rect", {x: R - 100, y: T, width: 12, height: 3, fill: "#e15759"}));
    svg.appendChild(el("svg:text", {x: R - 84, y: T + 5, "font-size": 12}, W.eval_loss));
  }
}

// ---------------------------------------------------------------- a run's page
function runPage(root) {
  const path = root.dataset.path;
  let data = JSON.parse(document.getElementById("run-data").textContent);
  const render = d => {
    document.querySelectorAll("svg.loss").forEach(svg => {
      const m = d.models.find(x => x.path === svg.dataset.model);
      drawLoss(svg, m ? m.history : []);
    });
  };
  render(data);
  const logBox = document.getElementById("log");
  if (logBox) logBox.scrollTop = logBox.scrollHeight;
  const stop = document.getElementById("stop-btn"), resume = document.getElementById("resume-btn");
  if (stop) stop.onclick = async () => { stop.disabled = true; await postJSON("/api/stop", {path}).catch(e => alert(e.message)); };
  if (resume) resume.onclick = async () => {
    resume.disabled = true;
    await postJSON("/api/resume", {path}).catch(e => alert(e.message));
    location.reload();
  };
  const poll = async () => {
    let d;
    try { d = await (await fetch("/api/run?path=" + encodeURIComponent(path))).json(); } catch (e) { return setTimeout(poll, 3000); }
    if (d.error) return;
    // Finished, stopped or failed, or a new model or eval folder: the page itself changes (doctor, links).
    if (d.status !== "running" || d.models.length !== data.models.length || d.evals.length !== data.evals.length) {
      return location.reload();
    }
    for (const s of d.steps || []) {
      const row = document.querySelector(`#steps tr[data-step="${CSS.escape(s.label)}"]`);
      if (row) {
        statusBadge(row.querySelector(".badge"), s.status);
        row.querySelector(".num").textContent = s.seconds != null ? s.seconds.toFixed(1) + " " + W.seconds : "";
      }
    }
    const log = document.getElementById("log");
    if (log && d.log !== undefined && log.textContent !== d.log) {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
      log.textContent = d.log;
      if (atEnd) log.scrollTop = log.scrollHeight;
    }
    render(d);
    data = d;
    setTimeout(poll, 1500);
  };
  if (data.status === "running") setTimeout(poll, 1500);
}

// ---------------------------------------------------------------- runs list
function runsPage(table) {
  const running = () => [...table.querySelectorAll(".run-status")].some(b => b.dataset.status === "running");
  const poll = async () => {
    const d = await (await fetch("/api/runs")).json();
    const rows = new Map([...table.querySelectorAll("tr[data-path]")].map(r => [r.dataset.path, r]));
    if (d.runs.some(r => !rows.has(r.path))) return location.reload();
    for (const r of d.runs) {
      const row = rows.get(r.path);
      statusBadge(row.querySelector(".run-status"), r.status);
      if (r.steps.length) row.querySelector(".run-steps").textContent = r.steps.filter(s => s.status === "done").length + "/" + r.steps.length;
    }
    if (running()) setTimeout(poll, 3000);
  };
  if (running()) setTimeout(poll, 3000);
}

// ---------------------------------------------------------------- chat
async function streamAnswer(col, body) {
  const text = col.querySelector(".text"), info = col.querySelector(".info");
  let res;
  try { res = await post("/api/chat", body); } catch (e) { info.textContent = e.message; return; }
  if (!res.ok) {
    const d = await res.json().catch(() => ({}));
    info.textContent = d.error || ("error: HTTP " + res.status);
    info.className = "info error-line";
    col.dataset.state = "error";
    return;
  }
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, k).trim();
      buf = buf.slice(k + 2);
      if (!line.startsWith("data:")) continue;
      const ev = JSON.parse(line.slice(5));
      if (ev.template !== undefined) col.querySelector(".tmpl").textContent = W.template + " " + ev.template;
      if (ev.passages !== undefined) showPassages(col, ev.retrieval, ev.passages);
      if (ev.text !== undefined) { text.textContent += ev.text; col.dataset.pieces = String(+(col.dataset.pieces || 0) + 1); }
      if (ev.error) { info.textContent = ev.error; info.className = "info error-line"; col.dataset.state = "error"; }
      if (ev.done) {
        info.textContent = W.finish + " " + ev.finish_reason + " · " + ev.completion_tokens + " " + W.tokens
          + (ev.abstained ? " · " + W.abstained : "");
        if (ev.abstained !== undefined) col.dataset.abstained = String(ev.abstained);
        col.dataset.state = "done";
      }
    }
  }
}

// The passages a model was asked with ([문서 n], chunk id, text), folded above its answer.
function showPassages(col, retrieval, passages) {
  const box = el("details", {class: "passages"});
  const how = retrieval ? " (" + retrieval.chunks + ", top " + retrieval.top_k + ")" : "";
  box.appendChild(el("summary", {class: "muted"}, W.passages + " " + passages.length + how));
  for (const p of passages) {
    const item = el("div", {class: "passage", "data-chunk": p.chunk_id});
    item.appendChild(el("strong", {}, "[문서 " + p.n + "] "));
    item.appendChild(el("span", {class: "muted"}, p.chunk_id + " "));
    item.appendChild(el("div", {}, p.text));
    box.appendChild(item);
  }
  col.insertBefore(box, col.querySelector(".text"));
  col.dataset.passages = String(passages.length);
}

function chatPage(form) {
  form.onsubmit = ev => {
    ev.preventDefault();
    const f = new FormData(form);
    const models = f.getAll("model");
    const endpoint = (f.get("endpoint") || "").trim();
    if (endpoint) models.push(endpoint);
    const err = document.getElementById("chat-error");
    err.hidden = true;
    if (!models.length || !f.get("question").trim()) { err.textContent = W.pick_models; err.hidden = false; return; }
    const answers = document.getElementById("answers");
    answers.innerHTML = "";
    const templateFrom = models.find(m => m.startsWith("run:")) || "";
    const settings = {temperature: +f.get("temperature"), top_p: +f.get("top_p"), repetition_penalty: +f.get("repetition_penalty"),
                      max_tokens: +f.get("max_tokens"), stop: f.get("stop"), context: f.get("context")};
    if ((f.get("top_k") || "").trim()) settings.top_k = +f.get("top_k");  // else a grounded run's own
    for (const m of models) {
      const col = el("div", {class: "chat-col", "data-model": m, "data-state": "streaming"});
      col.appendChild(el("h3", {}, m.replace(/^(run|base):/, "")));
      col.appendChild(el("div", {class: "muted tmpl"}));
      col.appendChild(el("div", {class: "text"}));
      col.appendChild(el("div", {class: "info muted"}));
      answers.appendChild(col);
      streamAnswer(col, {...settings, model: m, question: f.get("question"), template_from: templateFrom});
    }
  };
}

// ---------------------------------------------------------------- launch
function launchPage(form) {
  const recipes = JSON.parse(document.getElementById("recipes").textContent);
  const sel = document.getElementById("recipe"), profile = document.getElementById("profile");
  const err = document.getElementById("launch-error"), ok = document.getElementById("launch-ok");
  const pick = () => {
    const r = recipes.find(x => x.path === sel.value);
    document.getElementById("recipe-desc").textContent = r ? r.description : "";
    document.getElementById("output").placeholder = r ? "runs/" + r.name : "";
    profile.innerHTML = "";
    profile.appendChild(el("option", {value: ""}, W.none));
    for (const p of r ? r.profiles : []) profile.appendChild(el("option", {value: p}, p));
  };
  sel.onchange = pick;
  pick();
  const body = () => Object.fromEntries(new FormData(form).entries());
  const show = (e) => { ok.hidden = true; err.textContent = e.message; err.hidden = false; };
  document.getElementById("check-btn").onclick = async () => {
    err.hidden = true;
    try {
      const d = await postJSON("/api/launch/check", body());
      ok.textContent = W.check_ok + " " + d.steps.join(" → ") + "  (" + d.command + ")";
      ok.hidden = false;
    } catch (e) { show(e); }
  };
  form.onsubmit = async ev => {
    ev.preventDefault();
    err.hidden = true;
    const btn = document.getElementById("start-btn");
    btn.disabled = true;
    try {
      const d = await postJSON("/api/launch", body());
      location.href = "/run?path=" + encodeURIComponent(d.path);
    } catch (e) { show(e); btn.disabled = false; }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run) runPage(run);
  const runs = document.getElementById("runs");
  if (runs) runsPage(runs);
  const chat = document.getElementById("chat-form");
  if (chat) chatPage(chat);
  const launch = document.getElementById("launch-form");
  if (launch) launchPage(launch);
});
