// The Frames panel: chosen or dropped frames go to POST /detect at a low confidence with `preview=true` (the
// frame as the model saw it: browsers cannot show TIFF or 16-bit PNG); the slider then filters the answer
// without asking again. Grad-CAM is asked for only while its toggle is on, once per frame, and kept.

import { getJson, query } from "./api.js";
import { $, boxText, el, fixed, report, row } from "./dom.js";

const REQUEST_CONF = 0.05;  // the service answers down to this; the slider filters above it
const FRAMES_PER_REQUEST = 8;
const DISPLAY_WIDTH = 640;  // canvas pixels across for the frame
const MAX_ZOOM = 4;
const MIN_BOX_PX = 14;  // frame pixels: a target of a few pixels still gets a box one sees, as in the annotated MP4
const PALETTE = ["#39ff7a", "#ffcc00", "#ff4fa3", "#4fc3ff", "#ff8a3d", "#c77dff"];
const IMAGE_NAME = /\.(png|jpe?g|tiff?|bmp)$/i;

const frames = [];
let selected = -1;

export function setupFrames() {
  const input = $("#frame-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  const drop = $("#frame-drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });
  $("#conf").addEventListener("input", () => {
    $("#conf-value").textContent = fixed(threshold());
    render();
  });
  $("#gradcam").addEventListener("change", () => {
    render();
    if (gradcamOn() && frames[selected]) loadGradcam(frames[selected]);
  });
  window.addEventListener("masenet:key", () => retryFailed());
  render();
}

function threshold() {
  return Number($("#conf").value);
}

function gradcamOn() {
  return $("#gradcam").checked;
}

function addFiles(files) {
  const images = files.filter((file) => file.type.startsWith("image/") || IMAGE_NAME.test(file.name));
  if (images.length === 0) {
    if (files.length) report("those files are not frames: choose PNG, JPEG, TIFF or BMP images");
    return;
  }
  const added = images.map((file) => ({
    file,
    status: "detecting",
    result: null,
    preview: null,
    gradcam: null,
    gradcamStatus: "none",
    error: null,
  }));
  frames.push(...added);
  selected = frames.length - added.length;
  render();
  for (let start = 0; start < added.length; start += FRAMES_PER_REQUEST) {
    detect(added.slice(start, start + FRAMES_PER_REQUEST));
  }
}

function retryFailed() {
  const failed = frames.filter((frame) => frame.status === "error");
  for (const frame of failed) frame.status = "detecting";
  if (failed.length) {
    render();
    detect(failed);
  }
  const frame = frames[selected];
  if (frame && gradcamOn() && frame.gradcamStatus === "error") loadGradcam(frame);
}

async function postFrames(batch, params) {
  const form = new FormData();
  for (const frame of batch) form.append("image", frame.file, frame.file.name);
  const tta = $("#frame-tta").value;
  return getJson(`/detect?${query({ conf: REQUEST_CONF, tta, ...params })}`, { method: "POST", body: form });
}

async function detect(batch) {
  try {
    const answer = await postFrames(batch, { preview: true });
    await Promise.all(
      answer.results.map(async (result, index) => {
        const frame = batch[index];
        frame.result = { ...result, timing: answer.timing };
        frame.preview = result.preview ? await loadImage(`data:image/jpeg;base64,${result.preview}`) : null;
        frame.status = "done";
      }),
    );
  } catch (error) {
    for (const frame of batch) {
      frame.status = "error";
      frame.error = error.message;
    }
    report(error);
  }
  render();
  const frame = frames[selected];
  if (frame && batch.includes(frame) && gradcamOn()) loadGradcam(frame);
}

async function loadGradcam(frame) {
  if (frame.gradcamStatus === "loading" || frame.gradcamStatus === "done" || frame.status !== "done") return;
  frame.gradcamStatus = "loading";
  render();
  try {
    const answer = await postFrames([frame], { gradcam: true });
    frame.gradcam = await loadImage(`data:image/png;base64,${answer.results[0].gradcam}`);
    frame.gradcamStatus = "done";
  } catch (error) {
    frame.gradcamStatus = "error";
    report(error);
  }
  render();
}

function loadImage(source) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.addEventListener("load", () => resolve(image));
    image.addEventListener("error", () => reject(new Error("the service sent an image the browser cannot read")));
    image.src = source;
  });
}

function visibleDetections(frame) {
  if (!frame || !frame.result) return [];
  return frame.result.detections.filter((detection) => detection.score >= threshold());
}

function render() {
  renderStrip();
  const frame = frames[selected];
  const shown = visibleDetections(frame);
  $("#detection-count").textContent = String(shown.length);
  renderMeta(frame);
  draw(frame, shown);
  const body = $("#frame-detections tbody");
  body.replaceChildren(
    ...shown.map((detection) => row(detection.class_name, fixed(detection.score), boxText(detection.box))),
  );
}

function renderMeta(frame) {
  const meta = $("#frame-meta");
  if (!frame) meta.textContent = "No frame yet: choose or drop one above.";
  else if (frame.status === "detecting") meta.textContent = `${frame.file.name}: detecting…`;
  else if (frame.status === "error") meta.textContent = `${frame.file.name}: ${frame.error}`;
  else {
    const { width, height, timing } = frame.result;
    const cam = { loading: ", Grad-CAM…", error: ", Grad-CAM failed" }[frame.gradcamStatus] || "";
    meta.textContent = `${frame.file.name}: ${width}×${height}, ${Math.round(timing.total_ms)} ms${cam}`;
  }
}

function renderStrip() {
  const strip = $("#frame-strip");
  strip.replaceChildren(
    ...frames.map((frame, index) => {
      const picture = frame.preview ? el("img", { src: frame.preview.src, alt: "" }) : el("span", {}, "…");
      const badge = frame.status === "done" ? String(visibleDetections(frame).length) : frame.status === "error" ? "!" : "";
      return el(
        "button",
        {
          type: "button",
          className: index === selected ? "thumb selected" : "thumb",
          title: frame.file.name,
          onclick: () => select(index),
        },
        picture,
        el("b", {}, badge),
      );
    }),
  );
  strip.hidden = frames.length < 2;
}

function select(index) {
  selected = index;
  render();
  if (gradcamOn()) loadGradcam(frames[index]);
}

function draw(frame, shown) {
  const canvas = $("#overlay");
  const context = canvas.getContext("2d");
  if (!frame || !frame.result) {
    canvas.dataset.layer = "none";
    context.fillStyle = "#0d1117";
    context.fillRect(0, 0, canvas.width, canvas.height);
    return;
  }
  const { width, height } = frame.result;
  const zoom = Math.min(MAX_ZOOM, DISPLAY_WIDTH / width);
  canvas.width = Math.round(width * zoom);
  canvas.height = Math.round(height * zoom);
  const background = gradcamOn() && frame.gradcam ? frame.gradcam : frame.preview;
  context.imageSmoothingEnabled = zoom < 1;  // enlarged frames stay pixel-sharp: the targets are a few pixels
  if (background) context.drawImage(background, 0, 0, canvas.width, canvas.height);
  canvas.dataset.layer = background === frame.gradcam ? "gradcam" : "frame";
  for (const detection of shown) drawBox(context, detection, zoom);
}

function drawBox(context, detection, zoom) {
  const [x1, y1, x2, y2] = detection.box.map((value) => value * zoom);
  const least = MIN_BOX_PX * Math.max(zoom, 1);
  const half = [Math.max(x2 - x1, least) / 2, Math.max(y2 - y1, least) / 2];
  const centre = [(x1 + x2) / 2, (y1 + y2) / 2];
  const left = Math.round(centre[0] - half[0]);
  const top = Math.round(centre[1] - half[1]);
  const colour = PALETTE[detection.class_id % PALETTE.length];
  context.strokeStyle = colour;
  context.lineWidth = 2;
  context.strokeRect(left, top, Math.round(2 * half[0]), Math.round(2 * half[1]));
  const label = `${detection.class_name} ${fixed(detection.score)}`;
  context.font = "12px system-ui, sans-serif";
  const labelWidth = Math.ceil(context.measureText(label).width) + 6;
  const labelTop = top >= 16 ? top - 16 : top + Math.round(2 * half[1]) + 1;
  context.fillStyle = "rgba(13, 17, 23, 0.8)";
  context.fillRect(left - 1, labelTop, labelWidth, 15);
  context.fillStyle = colour;
  context.fillText(label, left + 2, labelTop + 11);
}
