// dml-csr serve: the page. Plain JavaScript, no framework, nothing loaded from elsewhere.
//
// Each photo is sent to POST /parse (one after the other: the server parses one at a time).
// The answer's label map (an 8-bit grey PNG of class ids: the red channel is the id) and the
// photo itself are drawn into canvases, so the per-class toggles recolour the overlay here,
// without asking the server again; the mask panel asks GET /mask for the result's id, so grow
// and feather do not run the network again. docs/inference.md, "Try it in a browser".
"use strict";

const state = { info: null, queue: Promise.resolve() };

const $ = (selector, root = document) => root.querySelector(selector);

function showError(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

// The server's {"error": ...} of a failed answer, or a line naming the status.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error} (HTTP ${response.status})`;
  } catch (e) { /* not JSON */ }
  return `the server answered HTTP ${response.status} ${response.statusText}`;
}

function dataUrlToBlob(url) {
  const [head, data] = url.split(",", 2);
  const mime = head.slice(5).split(";")[0];
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: mime });
}

function setDownload(link, blob, filename) {
  if (link.href && link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  link.hidden = false;
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

// ------------------------------------------------------------------------------ model facts
async function loadInfo() {
  const info = $("#model-info");
  try {
    const response = await fetch("/healthz");
    if (!response.ok) throw new Error(await errorOf(response));
    state.info = await response.json();
  } catch (err) {
    showError($("#error"), `The server did not describe its model: ${err.message}`);
    info.textContent = "";
    return;
  }
  const i = state.info;
  const mb = (i.limits.max_upload_bytes / 2 ** 20).toFixed(0);
  const mp = (i.limits.max_pixels / 1e6).toFixed(0);
  info.textContent = `${i.dataset} labels (${i.class_names.length} classes), ` +
    `${i.backend} on ${i.device}, detector: ${i.detector || "none"}. ` +
    `Photos up to ${mb} MB and ${mp} megapixels.`;
  if (!i.detect || !i.detector) {
    $("#detect").checked = false;
    $("#detect").disabled = !i.detector;
  }
}

// ------------------------------------------------------------------------------ one photo
function newCard(file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = file.name;
  $("#results").prepend(card);
  return card;
}

function parsePhoto(file) {
  const card = newCard(file);
  const detect = $("#detect").checked ? "1" : "0";
  // one request at a time: later photos wait here, not in the server's queue
  state.queue = state.queue.then(() => runParse(card, file, detect));
  return state.queue;
}

async function runParse(card, file, detect) {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("detect", detect);
  let res;
  try {
    const response = await fetch("/parse", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorOf(response));
    res = await response.json();
  } catch (err) {
    card.dataset.state = "error";
    $(".state-text", card).textContent = "failed";
    showError($(".result-error", card), err.message);
    return;
  }
  try {
    await showResult(card, file, res);
    card.dataset.state = "done";
  } catch (err) {
    card.dataset.state = "error";
    showError($(".result-error", card), `cannot show the result: ${err.message}`);
  }
}

async function decodeLabels(url) {
  const bitmap = await createImageBitmap(dataUrlToBlob(url),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const labels = new Uint8Array(bitmap.width * bitmap.height);
  for (let p = 0; p < labels.length; p++) labels[p] = rgba[4 * p];   // grey PNG: red = id
  return { labels, width: bitmap.width, height: bitmap.height };
}

// The photo's pixels at the label map's size, or null when this browser cannot decode the file
// (TIFF, PNM) or decodes it at another size: the server's overlay is shown instead.
async function decodePhoto(file, width, height) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (err) {
    return null;
  }
  if (bitmap.width !== width || bitmap.height !== height) return null;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, width, height);
}

async function showResult(card, file, res) {
  const [h, w] = res.image_size;
  const faces = res.faces.length;
  $(".state-text", card).textContent = res.no_face ? "no face found (untick 'find the faces' " +
    "to parse the photo as one face)" : "";
  $(".faces-count", card).textContent = `${faces} face${faces === 1 ? "" : "s"}`;
  $(".faces-count", card).dataset.count = String(faces);
  $(".seconds", card).textContent = `${res.seconds.toFixed(2)} s`;
  $(".seconds", card).dataset.seconds = String(res.seconds);

  const { labels } = await decodeLabels(res.label_map);
  const photo = await decodePhoto(file, w, h);
  const view = { card, res, labels, photo, width: w, height: h,
                 shown: new Set(), maskRequest: 0 };
  const present = new Set(labels);
  present.delete(0);
  for (const c of present) view.shown.add(c);

  buildToggles(view, [...present].sort((a, b) => a - b));
  buildMaskPanel(view);
  await drawOverlay(view);

  const base = stem(res.name || file.name);
  setDownload($(".download-label-map", card), dataUrlToBlob(res.label_map), `${base}_labels.png`);
  const facts = Object.fromEntries(Object.entries(res).filter(
    ([k]) => !["label_map", "overlay", "mask"].includes(k)));
  setDownload($(".download-json", card),
    new Blob([JSON.stringify(facts, null, 1)], { type: "application/json" }), `${base}.json`);
  $(".panels", card).hidden = false;
}

// ------------------------------------------------------------------------------ the overlay
function buildToggles(view, present) {
  const box = $(".class-toggles", view.card);
  const names = view.res.class_names;
  const palette = state.info ? state.info.palette : [];
  if (!present.length) {
    box.textContent = "no face class in this photo";
    return;
  }
  for (const c of present) {
    const label = document.createElement("label");
    label.className = "class-toggle";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = true;
    input.dataset.classId = String(c);
    input.dataset.className = names[c];
    input.addEventListener("change", () => {
      if (input.checked) view.shown.add(c); else view.shown.delete(c);
      drawOverlay(view);
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const rgb = palette[c] || [128, 128, 128];
    swatch.style.background = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
    label.append(input, swatch, document.createTextNode(names[c]));
    box.append(label);
  }
}

// The photo blended half and half with the colours of the ticked classes (draw_overlay's
// alpha 0.5), and the face boxes when the faces were detected.
async function drawOverlay(view) {
  const canvas = $(".overlay", view.card);
  canvas.width = view.width;
  canvas.height = view.height;
  const ctx = canvas.getContext("2d");
  if (!view.photo) {            // the browser cannot show this file: the server's overlay
    const bitmap = await createImageBitmap(dataUrlToBlob(view.res.overlay));
    ctx.drawImage(bitmap, 0, 0);
    for (const input of view.card.querySelectorAll(".class-toggle input")) input.disabled = true;
    $(".class-toggles", view.card).title = "this browser cannot decode the photo: the " +
      "server's overlay is shown, with every class";
  } else {
    const palette = state.info ? state.info.palette : [];
    const lut = new Int16Array(256 * 3).fill(-1);
    for (const c of view.shown) {
      const rgb = palette[c];
      if (rgb) lut.set(rgb, 3 * c);
    }
    const out = new ImageData(new Uint8ClampedArray(view.photo.data), view.width, view.height);
    const px = out.data;
    const labels = view.labels;
    for (let p = 0; p < labels.length; p++) {
      const c = labels[p];
      if (c === 0 || lut[3 * c] < 0) continue;
      const q = 4 * p;
      px[q] = (px[q] + lut[3 * c] + 1) >> 1;
      px[q + 1] = (px[q + 1] + lut[3 * c + 1] + 1) >> 1;
      px[q + 2] = (px[q + 2] + lut[3 * c + 2] + 1) >> 1;
    }
    ctx.putImageData(out, 0, 0);
    if (view.res.detect && state.info && state.info.detector) {
      ctx.strokeStyle = "#00ff00";
      ctx.lineWidth = 1;
      for (const face of view.res.faces) {
        const [x1, y1, x2, y2] = face.box;
        ctx.strokeRect(Math.round(x1) + 0.5, Math.round(y1) + 0.5,
          Math.round(x2 - x1) - 1, Math.round(y2 - y1) - 1);
      }
    }
  }
  const version = Number(canvas.dataset.version || 0) + 1;
  canvas.dataset.version = String(version);
  canvas.toBlob((blob) => {
    if (blob && canvas.dataset.version === String(version)) {
      setDownload($(".download-overlay", view.card), blob,
        `${stem(view.res.name || "photo")}_overlay.png`);
    }
  }, "image/png");
}

// ------------------------------------------------------------------------------ the mask
function maskChoices(view) {
  const info = state.info;
  const names = view.res.class_names;
  const own = new Set(names.concat(info ? info.tokens : []));
  const groups = info ? Object.keys(info.mask_names).filter((n) => !own.has(n)) : [];
  return { groups, classes: names.slice(1) };
}

function buildMaskPanel(view) {
  const box = $(".mask-classes", view.card);
  const { groups, classes } = maskChoices(view);
  const add = (name, isGroup) => {
    const label = document.createElement("label");
    label.className = isGroup ? "mask-class group" : "mask-class";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = name;
    input.addEventListener("change", () => scheduleMask(view));
    label.append(input, document.createTextNode(name.replace(/_/g, " ")));
    box.append(label);
  };
  groups.forEach((g) => add(g, true));
  classes.forEach((c) => add(c, false));
  const pairs = [[".grow-range", ".grow"], [".feather-range", ".feather"]];
  for (const [rangeSel, numberSel] of pairs) {
    const range = $(rangeSel, view.card);
    const number = $(numberSel, view.card);
    range.addEventListener("input", () => { number.value = range.value; scheduleMask(view); });
    number.addEventListener("input", () => { range.value = number.value; scheduleMask(view); });
  }
}

function scheduleMask(view) {
  clearTimeout(view.maskTimer);
  view.maskTimer = setTimeout(() => updateMask(view), 150);
}

async function updateMask(view) {
  const card = view.card;
  const chosen = [...card.querySelectorAll(".mask-classes input:checked")].map((i) => i.value);
  const preview = $(".mask-preview", card);
  const error = $(".mask-error", card);
  if (!chosen.length) {
    preview.hidden = true;
    $(".download-mask", card).hidden = true;
    $(".mask-hint", card).hidden = false;
    showError(error, "");
    return;
  }
  const query = new URLSearchParams({
    id: view.res.id, classes: chosen.join(","),
    grow: $(".grow", card).value || "0", feather: $(".feather", card).value || "0" });
  const request = ++view.maskRequest;
  let blob;
  try {
    const response = await fetch(`/mask?${query}`);
    if (!response.ok) throw new Error(await errorOf(response));
    blob = await response.blob();
  } catch (err) {
    if (request === view.maskRequest) showError(error, err.message);
    return;
  }
  if (request !== view.maskRequest) return;          // a newer request is on its way
  showError(error, "");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.onload = () => {
    preview.dataset.version = String(Number(preview.dataset.version || 0) + 1);
  };
  preview.dataset.query = query.toString();
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $(".mask-hint", card).hidden = true;
  setDownload($(".download-mask", card), blob,
    `${stem(view.res.name || "photo")}_mask_${chosen.join("+")}.png`);
}

// ------------------------------------------------------------------------------ input
function addFiles(files) {
  showError($("#error"), "");
  for (const file of files) parsePhoto(file);
}

function setup() {
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles([...event.dataTransfer.files]);
  });
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
