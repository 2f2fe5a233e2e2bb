// SAM3 web page: pick an image, prompt (concepts / clicks / boxes), POST segment, draw the masks.
// Masks come as COCO compressed RLE (mask_format "rle"), decoded here; coordinates are image pixels.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = [[230, 25, 75], [60, 180, 75], [255, 200, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 220, 220], [240, 50, 230], [160, 220, 60], [0, 128, 128], [170, 110, 40], [128, 0, 0]];
const MASK_ALPHA = 120;
const state = { image: null, dataUrl: null, points: [], boxes: [], drag: null, detections: [], overlay: null,
  busy: false, again: false };

// ---- COCO RLE ------------------------------------------------------------------------------

// The counts string of pycocotools (rleToString): 5 bits per char (+48), 0x20 = more chars follow,
// 0x10 in the last char = negative; from the third count on, each value is a delta to counts[i-2].
function decodeCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, c = 0x20;
    while (c & 0x20) {
      c = s.charCodeAt(p++) - 48;
      x += (c & 0x1f) * 2 ** (5 * k++);
    }
    if (c & 0x10) x -= 2 ** (5 * k);
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// {size: [h, w], counts: str} → Uint8Array h*w row-major (1 = mask). Runs are column-major, zeros first.
function decodeRle(rle) {
  const [h, w] = rle.size, mask = new Uint8Array(h * w);
  let p = 0;
  decodeCounts(rle.counts).forEach((n, i) => {
    if (i % 2) for (let k = p; k < p + n; k++) mask[(k % h) * w + Math.floor(k / h)] = 1;
    p += n;
  });
  return mask;
}

// ---- image ---------------------------------------------------------------------------------

function setImage(dataUrl) {
  const img = new Image();
  img.onload = () => {
    Object.assign(state, { image: img, dataUrl, points: [], boxes: [], detections: [], overlay: null,
      imageId: newImageId(), imageSent: false });
    $("view").width = img.naturalWidth;
    $("view").height = img.naturalHeight;
    showStatus(`Image ${img.naturalWidth}×${img.naturalHeight}. Type concepts and press Segment, or click it.`, 0);
    $("results").replaceChildren();
    render();
  };
  img.onerror = () => showError("this file is not an image the browser can open");
  img.src = dataUrl;
}

// The server keeps an image's embedding under its image_id: once the image went with the id, later
// requests send the id alone (no upload); if the server no longer has it, the image goes again.
function newImageId() {
  const random = self.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  return `page-${random}`;
}

function readFile(file) {
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result);
  reader.readAsDataURL(file);
}

// A small synthetic scene (no download needed): sky, sun, house, tree, ground.
function sampleImage() {
  const c = document.createElement("canvas");
  c.width = 640; c.height = 480;
  const g = c.getContext("2d");
  const sky = g.createLinearGradient(0, 0, 0, 300);
  sky.addColorStop(0, "#7dd3fc"); sky.addColorStop(1, "#e0f2fe");
  g.fillStyle = sky; g.fillRect(0, 0, 640, 480);
  g.fillStyle = "#65a30d"; g.fillRect(0, 330, 640, 150);
  g.fillStyle = "#facc15"; g.beginPath(); g.arc(540, 90, 45, 0, 2 * Math.PI); g.fill();
  g.fillStyle = "#b45309"; g.fillRect(120, 210, 200, 150);
  g.fillStyle = "#991b1b"; g.beginPath(); g.moveTo(100, 215); g.lineTo(220, 120); g.lineTo(340, 215); g.fill();
  g.fillStyle = "#1e3a8a"; g.fillRect(200, 290, 40, 70);
  g.fillStyle = "#78350f"; g.fillRect(445, 250, 24, 110);
  g.fillStyle = "#166534"; g.beginPath(); g.arc(457, 225, 60, 0, 2 * Math.PI); g.fill();
  return c.toDataURL("image/png");
}

// ---- prompts on the canvas -----------------------------------------------------------------

function imageXY(event) {
  const canvas = $("view"), r = canvas.getBoundingClientRect();
  return [(event.clientX - r.left) * canvas.width / r.width, (event.clientY - r.top) * canvas.height / r.height];
}

function onPointerDown(event) {
  if (!state.image) return;
  event.preventDefault();
  state.drag = { start: imageXY(event), end: imageXY(event), negative: event.shiftKey || event.button === 2 };
}

function onPointerMove(event) {
  if (!state.drag) return;
  state.drag.end = imageXY(event);
  render();
}

function onPointerUp(event) {
  const drag = state.drag;
  if (!drag) return;
  state.drag = null;
  const [x0, y0] = drag.start, [x1, y1] = imageXY(event), label = drag.negative ? 0 : 1;
  const scale = $("view").width / $("view").getBoundingClientRect().width;
  if (Math.hypot(x1 - x0, y1 - y0) < 5 * scale) addPoint([x0, y0], label);
  else addBox([Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map(clampTo), label);
}

function clampTo(v, i) {
  return Math.max(0, Math.min(v, i % 2 ? $("view").height : $("view").width));
}

function addPoint(xy, label) {
  if (["text", "auto"].includes($("mode").value)) $("mode").value = "point";
  state.points.push({ xy, label });
  render();
  segment();
}

function addBox(xyxy, label) {
  const mode = $("mode").value;
  if (mode === "auto") $("mode").value = "box";
  state.boxes.push({ xyxy, label });
  render();
  if (mode !== "text") segment();
}

// ---- request / response --------------------------------------------------------------------

function concepts() {
  return $("text").value.split(",").map((t) => t.trim()).filter(Boolean);
}

// The number inputs: request field → input id. Their defaults and ranges are the server's (the spec,
// through /openapi.json); an input left empty is left out of the request, so the server's default applies.
const NUMBER_FIELDS = { threshold: "threshold", points_per_side: "pps", pred_iou_thresh: "iou",
  stability_score_thresh: "stability" };

function numbers(names) {
  const out = {};
  for (const name of names) if ($(NUMBER_FIELDS[name]).value !== "") out[name] = Number($(NUMBER_FIELDS[name]).value);
  return out;
}

async function loadDefaults() {
  try {
    const doc = await (await fetch("openapi.json")).json();
    const props = doc.paths["/segment"].post.requestBody.content["application/json"].schema.properties;
    for (const [name, id] of Object.entries(NUMBER_FIELDS)) {
      const field = props[name] || {};
      if (field.default !== undefined) $(id).value = field.default;
      if (field.minimum !== undefined) $(id).min = field.minimum;
      if (field.maximum !== undefined) $(id).max = field.maximum;
    }
  } catch (err) {
    console.warn("no defaults from openapi.json; empty fields take the server's defaults", err);
  }
}

function buildRequest() {
  const mode = $("mode").value, body = { image_id: state.imageId, mode, mask_format: "rle" };
  if (!state.imageSent) body.image = state.dataUrl;
  const points = state.points, boxes = state.boxes;
  if (mode === "text") {
    const names = concepts();
    if (names.length) body.text = names.length === 1 ? names[0] : names;
    Object.assign(body, numbers(["threshold"]));
    if (boxes.length) {
      body.exemplar_boxes = boxes.map((b) => b.xyxy);
      body.exemplar_labels = boxes.map((b) => b.label);
    }
  } else if (mode === "auto") {
    Object.assign(body, numbers(["points_per_side", "pred_iou_thresh", "stability_score_thresh"]));
  } else {
    if (points.length) {
      body.point_coords = points.map((p) => p.xy);
      body.point_labels = points.map((p) => p.label);
    }
    if (boxes.length) body.box_coords = boxes.length === 1 ? boxes[0].xyxy : boxes.map((b) => b.xyxy);
  }
  return body;
}

// Any response shape (text, point/box, list of boxes, auto) → [{rle, score, name, box}].
function detections(res, mode) {
  if (res.mask) return [{ rle: res.mask, score: res.score, name: "object" }];
  if (mode === "auto") {
    return res.masks.map((m, i) => ({ rle: m.segmentation, score: m.score, name: `mask ${i + 1}`,
      box: [m.bbox[0], m.bbox[1], m.bbox[0] + m.bbox[2], m.bbox[1] + m.bbox[3]] }));
  }
  const names = res.concepts || concepts();
  return res.masks.map((rle, i) => ({ rle, score: res.scores[i], box: res.boxes[i],
    name: mode === "text" ? names[res.labels ? res.labels[i] : 0] || "visual" : `object ${i + 1}` }));
}

async function segment() {
  if (!state.image) return showError("choose an image first (or press “Use sample”)");
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  $("run").disabled = true;
  showError("");
  const start = performance.now(), mode = $("mode").value;
  try {
    const res = await postImage(buildRequest());
    state.detections = detections(res, mode);
    drawMasks();
    listResults();
    const ms = Math.round(performance.now() - start);
    showStatus(`${state.detections.length} masks drawn (${mode}) in ${ms} ms`, state.detections.length);
  } catch (err) {
    showError(err.message);
    showStatus("request failed", 0);
  } finally {
    state.busy = false;
    $("run").disabled = false;
    if (state.again) { state.again = false; segment(); }
  }
}

// POST body; a request that left its image out and hears the server no longer has it goes again with it.
async function postImage(body) {
  try {
    const res = await post(body);
    if (body.image && body.image_id === state.imageId) state.imageSent = true;
    return res;
  } catch (err) {
    if (body.image || !err.message.includes("not in the embedding cache")) throw err;
    state.imageSent = false;
    return postImage({ ...body, image: state.dataUrl });
  }
}

async function post(body) {
  const headers = { "Content-Type": "application/json" }, token = $("token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch("segment", { method: "POST", headers, body: JSON.stringify(body) });
  const payload = await response.json().catch(() => ({ error: `HTTP ${response.status} (no JSON body)` }));
  if (!response.ok) {
    if (response.status === 401) $("more").open = true;
    throw new Error(`${response.status}: ${payload.error || "request failed"}`);
  }
  return payload;
}

// ---- drawing -------------------------------------------------------------------------------

function drawMasks() {
  const { width: w, height: h } = $("view"), pixels = new ImageData(w, h), data = pixels.data;
  let covered = 0;
  state.detections.forEach((d, i) => {
    const mask = decodeRle(d.rle), [r, g, b] = COLORS[i % COLORS.length];
    for (let p = 0; p < mask.length; p++) {
      if (!mask[p]) continue;
      data.set([r, g, b, MASK_ALPHA], 4 * p);
      covered++;
    }
  });
  state.overlay = document.createElement("canvas");
  state.overlay.width = w; state.overlay.height = h;
  state.overlay.getContext("2d").putImageData(pixels, 0, 0);
  $("status").dataset.pixels = String(covered);
  render();
}

function render() {
  const canvas = $("view"), g = canvas.getContext("2d"), lw = Math.max(2, canvas.width / 300);
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  g.drawImage(state.image, 0, 0);
  if (state.overlay) g.drawImage(state.overlay, 0, 0);
  g.lineWidth = lw;
  g.font = `${Math.round(lw * 7)}px system-ui, sans-serif`;
  state.detections.forEach((d, i) => d.box && drawBox(g, d.box, rgb(i), `${d.name} ${d.score.toFixed(2)}`));
  state.boxes.forEach((b) => drawBox(g, b.xyxy, b.label ? "#16a34a" : "#dc2626", ""));
  if (state.drag) drawBox(g, [...state.drag.start, ...state.drag.end], "#0f172a", "");
  state.points.forEach((p) => drawPoint(g, p.xy, p.label ? "#16a34a" : "#dc2626", lw * 3));
}

function drawBox(g, [x0, y0, x1, y1], color, text) {
  g.strokeStyle = color;
  g.strokeRect(x0, y0, x1 - x0, y1 - y0);
  if (!text) return;
  g.fillStyle = color;
  g.fillText(text, x0 + 3, Math.max(y0 - 4, 12));
}

function drawPoint(g, [x, y], color, radius) {
  g.fillStyle = color;
  g.strokeStyle = "white";
  g.beginPath(); g.arc(x, y, radius, 0, 2 * Math.PI); g.fill(); g.stroke();
}

function rgb(i) {
  return `rgb(${COLORS[i % COLORS.length].join(",")})`;
}

function listResults() {
  $("results").replaceChildren(...state.detections.map((d, i) => {
    const li = document.createElement("li"), swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = rgb(i);
    li.append(swatch, `${d.name} — ${d.score.toFixed(3)}`);
    return li;
  }));
}

function showStatus(text, masks) {
  $("status").textContent = text;
  $("status").dataset.masks = String(masks);
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

// ---- wiring --------------------------------------------------------------------------------

function init() {
  const view = $("view");
  $("file").addEventListener("change", (e) => e.target.files[0] && readFile(e.target.files[0]));
  $("sample").addEventListener("click", () => { $("file").value = ""; setImage(sampleImage()); });
  $("run").addEventListener("click", segment);
  $("clear").addEventListener("click", () => {
    Object.assign(state, { points: [], boxes: [], detections: [], overlay: null });
    $("results").replaceChildren();
    showStatus("Prompts cleared.", 0);
    render();
  });
  $("text").addEventListener("keydown", (e) => e.key === "Enter" && segment());
  $("token").value = localStorage.getItem("sam3-token") || "";
  $("token").addEventListener("change", () => localStorage.setItem("sam3-token", $("token").value.trim()));
  view.addEventListener("pointerdown", onPointerDown);
  view.addEventListener("pointermove", onPointerMove);
  view.addEventListener("pointerup", onPointerUp);
  view.addEventListener("contextmenu", (e) => e.preventDefault());
  window.sam3 = { state, decodeCounts, decodeRle, segment, setImage, defaultsLoaded: loadDefaults() };
}

init();
