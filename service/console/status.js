// The Model and Health panel: GET /models (name, scale, classes, input size, runtime, test-time views),
// GET /status (workers, queue depths, streams by status) and GET /readyz, every five seconds.

import { getJson, request } from "./api.js";
import { $, el, fixed, sleep } from "./dom.js";

const REFRESH_MS = 5000;

export function setupStatus() {
  window.addEventListener("masenet:key", () => refresh());
  refreshForever();
}

async function refreshForever() {
  for (;;) {
    await refresh();
    await sleep(REFRESH_MS);
  }
}

async function refresh() {
  const [models, status, ready] = await Promise.allSettled([getJson("/models"), getJson("/status"), readiness()]);
  renderReady(ready.status === "fulfilled" ? ready.value : { ok: false, text: ready.reason.message });
  if (models.status === "fulfilled") renderModels(models.value.models);
  else $("#models").replaceChildren(unavailable(models.reason));
  if (status.status === "fulfilled") renderHealth(status.value);
  else $("#health").replaceChildren(unavailable(status.reason));
}

async function readiness() {
  try {
    const answer = await (await request("/readyz")).json();
    return { ok: true, text: `ready: ${answer.workers.length} worker${answer.workers.length === 1 ? "" : "s"}` };
  } catch (error) {
    return { ok: false, text: error.message };
  }
}

function unavailable(error) {
  const text = error.status === 401 ? "needs an API key" : `unavailable: ${error.message}`;
  return el("p", { className: "meta" }, text);
}

function renderReady({ ok, text }) {
  const badge = $("#ready");
  badge.textContent = ok ? text : "not ready";
  badge.title = text;
  badge.className = ok ? "badge running" : "badge failed";
}

function facts(pairs) {
  return el("dl", {}, ...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, String(value))]));
}

function renderModels(models) {
  if (!models.length) {
    $("#models").replaceChildren(el("p", { className: "meta" }, "no worker has a model loaded"));
    return;
  }
  $("#models").replaceChildren(
    ...models.map((model) =>
      facts([
        ["name", `${model.name} (scale ${model.scale || "?"})`],
        ["classes", `${model.nc}: ${model.class_names.join(", ")}`],
        ["input", model.pixel_scale ? `frames × ${fixed(model.pixel_scale)}` : `longer side ${model.imgsz}`],
        ["runtime", `${model.runtime} on ${model.device} (${model.dtype})`],
        ["test-time views", model.tta],
        ["weights", model.weights_sha256 ? `sha256 ${model.weights_sha256.slice(0, 12)}…` : "–"],
        ["workers", model.workers.length],
      ]),
    ),
  );
}

function renderHealth(status) {
  const workers = status.workers.map((worker) =>
    el(
      "li",
      { title: worker.error || "" },
      el("span", { className: `badge ${worker.status}` }, worker.status),
      ` ${worker.name} on ${worker.hostname || "?"}, batch ≤ ${worker.max_batch}`,
    ),
  );
  const streams = Object.entries(status.streams)
    .filter(([, count]) => count > 0)
    .map(([name, count]) => `${count} ${name}`);
  $("#health").replaceChildren(
    el("ul", { className: "workers" }, ...(workers.length ? workers : [el("li", {}, "no workers")])),
    facts([
      ["image queue", status.queues.images],
      ["video queue", status.queues.video],
      ["streams", streams.length ? streams.join(", ") : "none"],
    ]),
  );
}
