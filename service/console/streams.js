// The Streams panel: the list from GET /streams every two seconds, a form for POST /streams, Stop buttons, and
// for the stream being watched its latest annotated snapshot (fetched as a blob every second) and the rate of
// its `frame` events, read from GET /streams/{id}/events.

import { ApiError, getBlob, getJson, readEvents, request } from "./api.js";
import { $, el, fixed, report, row, sleep } from "./dom.js";

const LIST_MS = 2000;
const SNAPSHOT_MS = 1000;
const RATE_WINDOW_S = 5;
const EVENTS_SHOWN = 8;
const LIVE = new Set(["starting", "running", "reconnecting"]);

let watched = null;  // {id, controller, frameTimes, snapshotUrl}

export function setupStreams() {
  $("#stream-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startStream().catch(report);
  });
  window.addEventListener("masenet:key", () => refresh());
  refreshForever();
}

async function refreshForever() {
  for (;;) {
    await refresh();
    await sleep(LIST_MS);
  }
}

async function refresh() {
  try {
    const { streams } = await getJson("/streams");
    renderList(streams);
    if (watched) {
      const record = streams.find((stream) => stream.stream_id === watched.id);
      if (record) renderWatchMeta(record);
    }
  } catch (error) {
    if (error.status !== 401) $("#stream-rows").replaceChildren(row(`the list failed: ${error.message}`));
  }
}

async function startStream() {
  const json = {
    url: $("#stream-url").value.trim(),
    fps: Number($("#stream-fps").value),
    conf: Number($("#stream-conf").value),
  };
  const accepted = await (await request("/streams", { method: "POST", json })).json();
  await refresh();
  watch(accepted.stream_id);
}

async function stopStream(id) {
  await request(`/streams/${id}`, { method: "DELETE" });
  await refresh();
}

function renderList(streams) {
  const rows = streams.map((stream) => {
    const buttons = el(
      "span",
      { className: "buttons" },
      el("button", { type: "button", className: "quiet", onclick: () => watch(stream.stream_id) }, "Watch"),
      LIVE.has(stream.status)
        ? el("button", { type: "button", onclick: () => stopStream(stream.stream_id).catch(report) }, "Stop")
        : null,
    );
    const status = el("span", { className: `badge ${stream.status}`, title: stream.error || "" }, stream.status);
    const latency = stream.latency_ms || {};
    const line = row(
      stream.stream_id.slice(0, 8),
      stream.url,
      status,
      `${fixed(stream.fps_in, 1)} / ${fixed(stream.fps_processed, 1)}`,
      `${fixed(latency.p50, 0)} / ${fixed(latency.p95, 0)} ms`,
      `${stream.frames_processed} / ${stream.frames_dropped}`,
      stream.reconnects,
      buttons,
    );
    if (watched && watched.id === stream.stream_id) line.className = "selected";
    return line;
  });
  $("#stream-rows").replaceChildren(...(rows.length ? rows : [row("no streams yet")]));
}

function watch(id) {
  unwatch();
  watched = { id, controller: new AbortController(), frameTimes: [], snapshotUrl: null, events: [], ended: false };
  $("#stream-watch").hidden = false;
  $("#watch-id").textContent = id;
  $("#watch-events").replaceChildren();
  followEvents(watched);
  refreshSnapshot(watched);
}

function unwatch() {
  if (!watched) return;
  watched.controller.abort();
  if (watched.snapshotUrl) URL.revokeObjectURL(watched.snapshotUrl);
  watched = null;
}

function eventRate(view) {
  const since = performance.now() - RATE_WINDOW_S * 1000;
  view.frameTimes = view.frameTimes.filter((time) => time >= since);
  return view.frameTimes.length / RATE_WINDOW_S;
}

function renderWatchMeta(record) {
  watched.ended = !LIVE.has(record.status);  // its last snapshot stays; there will be no newer one
  const latency = record.latency_ms || {};
  const error = record.error ? `; ${record.error}` : "";
  $("#watch-meta").textContent =
    `${record.status} on ${record.worker || "no worker yet"}: ${fixed(eventRate(watched), 1)} frame events/s, ` +
    `processed ${fixed(record.fps_processed, 1)} fps, latency p50 ${fixed(latency.p50, 0)} ms, ` +
    `p95 ${fixed(latency.p95, 0)} ms${error}`;
}

async function followEvents(view) {
  const onEvent = (type, data) => {
    if (type === "frame") {
      view.frameTimes.push(performance.now());
      return;
    }
    const text = type === "status" ? `status: ${data.status}` : `${type.replace("_", " ")} #${data.track_id}`;
    view.events = [`${fixed(data.time_s ?? 0, 1)} s  ${text}`, ...view.events].slice(0, EVENTS_SHOWN);
    if (watched === view) $("#watch-events").replaceChildren(...view.events.map((line) => el("li", {}, line)));
  };
  try {
    await readEvents(`/streams/${view.id}/events`, onEvent, view.controller.signal);
  } catch (error) {
    if (error.name !== "AbortError") report(error);
  }
}

async function refreshSnapshot(view) {
  while (watched === view && !view.ended) {
    try {
      const blob = await getBlob(`/streams/${view.id}/snapshot`, { signal: view.controller.signal });
      if (watched !== view) return;
      if (view.snapshotUrl) URL.revokeObjectURL(view.snapshotUrl);
      view.snapshotUrl = URL.createObjectURL(blob);
      $("#snapshot").src = view.snapshotUrl;
    } catch (error) {
      if (error.name === "AbortError") return;
      if (!(error instanceof ApiError && error.status === 409)) {
        report(error);
        return;
      }
    }
    await sleep(SNAPSHOT_MS);
  }
}
