// The Video panel: a chosen video is uploaded to POST /jobs (XMLHttpRequest, for the upload's progress), the job
// is polled until it ends, then its per-frame detections are fetched and, when annotated, the MP4 is fetched as
// a blob (a <video> tag cannot send the key) and played. The frame slider and the video follow each other.

import { getBlob, getJson, query, request, upload } from "./api.js";
import { $, boxText, fixed, report, row } from "./dom.js";

const POLL_MS = 500;
const ENDED = new Set(["finished", "failed", "canceled"]);

let current = null;  // {id, annotate, frames}
let videoUrl = null;

export function setupVideo() {
  const input = $("#video-input");
  input.addEventListener("change", () => {
    const [file] = input.files;
    input.value = "";
    if (file) start(file).catch(report);
  });
  $("#job-cancel").addEventListener("click", () => cancel().catch(report));
  $("#job-frame").addEventListener("input", () => showFrame(Number($("#job-frame").value), true));
  $("#job-video").addEventListener("timeupdate", followVideo);
}

function options() {
  return {
    conf: $("#video-conf").value,
    frame_stride: $("#video-stride").value,
    track: $("#video-track").checked,
    annotate: $("#video-annotate").checked,
  };
}

function reset() {
  current = null;
  if (videoUrl) URL.revokeObjectURL(videoUrl);
  videoUrl = null;
  const video = $("#job-video");
  video.removeAttribute("src");
  video.hidden = true;
  $("#job-frames").hidden = true;
  setProgress("#upload-progress", "#upload-text", 0);
  setProgress("#job-progress", "#job-progress-text", 0);
}

function setProgress(barSelector, textSelector, percent) {
  $(barSelector).value = percent;
  $(textSelector).textContent = `${percent} %`;
}

async function start(file) {
  reset();
  const params = options();
  const form = new FormData();
  form.append("video", file, file.name);
  $("#job-status").textContent = `Uploading ${file.name}…`;
  let accepted;
  try {
    accepted = await upload(`/jobs?${query(params)}`, form, (fraction) => {
      setProgress("#upload-progress", "#upload-text", Math.floor(fraction * 100));
    });
  } catch (error) {
    $("#job-status").textContent = `The upload was refused: ${error.message}`;
    throw error;
  }
  setProgress("#upload-progress", "#upload-text", 100);
  current = { id: accepted.job_id, annotate: params.annotate, frames: [] };
  $("#job-cancel").hidden = false;
  poll(current);
}

async function poll(job) {
  while (current === job) {
    let state;
    try {
      state = await getJson(`/jobs/${job.id}`);
    } catch (error) {
      $("#job-status").textContent = `Job ${job.id}: ${error.message}`;
      report(error);
      return;
    }
    if (current !== job) return;
    const { frames_done: done, frames_total: total } = state.progress;
    const percent = state.status === "finished" ? 100 : total ? Math.floor((100 * done) / total) : 0;
    setProgress("#job-progress", "#job-progress-text", percent);
    $("#job-status").textContent = `Job ${job.id}: ${state.status}, ${done} of ${total} frames`;
    if (ENDED.has(state.status)) {
      $("#job-cancel").hidden = true;
      if (state.status === "finished") await finish(job);
      else if (state.error) $("#job-status").textContent += `: ${state.error}`;
      return;
    }
    await new Promise((resolve) => {
      setTimeout(resolve, POLL_MS);
    });
  }
}

async function cancel() {
  if (!current) return;
  const job = current;
  await request(`/jobs/${job.id}`, { method: "DELETE" });
  $("#job-status").textContent = `Job ${job.id}: canceled`;
}

async function finish(job) {
  const result = await getJson(`/jobs/${job.id}/result`);
  if (current !== job) return;
  job.frames = result.frames;
  const { fps, width, height, frames } = result.video;
  const found = result.frames.reduce((sum, frame) => sum + frame.detections.length, 0);
  $("#job-status").textContent =
    `Job ${job.id}: finished; ${width}×${height} at ${fixed(fps, 1)} fps, ${frames} frames, ` +
    `${result.frames.length} processed, ${found} detections`;
  const slider = $("#job-frame");
  slider.max = String(Math.max(0, job.frames.length - 1));
  slider.value = "0";
  $("#job-frames").hidden = job.frames.length === 0;
  showFrame(0, false);
  if (!job.annotate) return;
  const blob = await getBlob(`/jobs/${job.id}/video`);
  if (current !== job) return;
  videoUrl = URL.createObjectURL(blob);
  const video = $("#job-video");
  video.src = videoUrl;
  video.hidden = false;
}

function showFrame(position, seek) {
  if (!current || !current.frames.length) return;
  const frame = current.frames[position];
  $("#job-frame-meta").textContent =
    `frame ${frame.index} at ${fixed(frame.time_s)} s: ${frame.detections.length} detections`;
  $("#job-detections tbody").replaceChildren(
    ...frame.detections.map((detection) =>
      row(detection.track_id ?? "–", detection.class_name, fixed(detection.score), boxText(detection.box)),
    ),
  );
  const video = $("#job-video");
  if (seek && videoUrl && Number.isFinite(video.duration)) video.currentTime = Math.min(frame.time_s, video.duration);
}

function followVideo() {
  if (!current || !current.frames.length) return;
  const time = $("#job-video").currentTime + 1e-3;
  let low = 0;
  let high = current.frames.length - 1;
  while (low < high) {  // the last processed frame at or before the playing time
    const middle = Math.ceil((low + high) / 2);
    if (current.frames[middle].time_s <= time) low = middle;
    else high = middle - 1;
  }
  $("#job-frame").value = String(low);
  showFrame(low, false);
}
