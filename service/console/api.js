// The service's HTTP API as the console calls it. Every request carries the bearer key kept in sessionStorage
// (nothing outlives the browser session); a refusal becomes an ApiError with the service's `detail`, and a 401
// also raises the "masenet:unauthorized" event that shows the key prompt. Uploads go through XMLHttpRequest for
// their progress; server-sent events are read through fetch, because EventSource cannot send the header.

const KEY_ITEM = "masenet.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
  window.dispatchEvent(new CustomEvent("masenet:key", { detail: Boolean(key) }));
}

function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

function refusal(status, detail) {
  if (status === 401) window.dispatchEvent(new CustomEvent("masenet:unauthorized", { detail }));
  return new ApiError(status, detail);
}

function detailOf(body, fallback) {
  if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  return fallback;
}

// Query parameters without the empty ones: {conf: 0.05, tta: ""} -> "conf=0.05".
export function query(params) {
  const kept = Object.entries(params).filter(([, value]) => value !== undefined && value !== null && value !== "");
  return new URLSearchParams(kept.map(([name, value]) => [name, String(value)])).toString();
}

export async function request(path, { method = "GET", body, json, signal } = {}) {
  const headers = withKey(json === undefined ? {} : { "Content-Type": "application/json" });
  const payload = json === undefined ? body : JSON.stringify(json);
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `the service did not answer (${error.message})`);
  }
  if (!response.ok) {
    const fallback = `${response.status} ${response.statusText}`;
    const body = await response.json().catch(() => null);
    throw refusal(response.status, detailOf(body, fallback));
  }
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export async function getBlob(path, options) {
  return (await request(path, options)).blob();
}

// POST a multipart form, reporting the fraction sent to onProgress(0..1); resolves with the JSON answer.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    const key = apiKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(refusal(xhr.status, detailOf(xhr.response, `${xhr.status} ${xhr.statusText}`)));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the upload failed: the service did not answer")));
    xhr.send(form);
  });
}

// Read server-sent events until the service ends them or `signal` aborts: onEvent(type, data) per event.
export async function readEvents(path, onEvent, signal) {
  const response = await request(path, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      dispatchBlock(buffer.slice(0, end), onEvent);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
    }
  }
}

function dispatchBlock(block, onEvent) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length === 0) return;  // comments (keep-alive) and `retry:` lines
  try {
    onEvent(type, JSON.parse(data.join("\n")));
  } catch {
    onEvent(type, data.join("\n"));
  }
}
