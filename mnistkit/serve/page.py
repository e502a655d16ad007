"""The page at ``GET /``: try the model in a browser. One HTML document, CSS and JS inline, no
external assets (works offline): upload or drop files, or (grey image models) draw on a canvas;
the top classes are shown with bars. It calls ``POST /predict`` like any client."""

from __future__ import annotations

import html
import json
from typing import Any

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>mnistkit serve: __TITLE__</title>
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:52em;padding:0 1em;color:#222}
h1{font-size:1.3em}.muted{color:#666}
#drop{border:2px dashed #999;border-radius:8px;padding:1.5em;text-align:center;margin:1em 0}
#drop.over{background:#eef5ff;border-color:#36c}
#draw{display:none;margin:1em 0}#draw canvas{background:#000;touch-action:none;cursor:crosshair}
.pred{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.6em 0}
.row{display:flex;align-items:center;gap:.6em;margin:.15em 0}
.row .name{width:8em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{flex:1;background:#eee;height:1em;border-radius:3px}
.bar span{display:block;height:100%;background:#36c;border-radius:3px}
.note{color:#a60;font-size:.9em}#error{color:#b00;white-space:pre-wrap}
button{font:inherit;padding:.3em 1em}
</style></head><body>
<h1>mnistkit serve: __TITLE__</h1>
<p class="muted">__ABOUT__</p>
<div id="drop">Drop files here, or <input id="files" type="file" multiple accept="__ACCEPT__"></div>
<div id="draw"><p>Or draw (light on dark, as the training images):</p>
<canvas id="canvas" width="280" height="280"></canvas><br>
<button id="classify" type="button">Classify drawing</button>
<button id="clear" type="button">Clear</button></div>
<div id="error" role="alert"></div><div id="results" aria-live="polite"></div>
<script>
"use strict";
const MODEL = __MODEL__;
const TOP = Math.min(5, MODEL.classes.length);
const $ = (id) => document.getElementById(id);
function show(data) {
  const out = $("results");
  out.textContent = "";
  for (const p of data.predictions) {
    const box = document.createElement("div");
    box.className = "pred";
    const head = document.createElement("div");
    head.innerHTML = "<b></b>: <span class='pred-class'></span> ";
    head.querySelector("b").textContent = p.file;
    head.querySelector(".pred-class").textContent = p.class;
    box.appendChild(head);
    for (const t of p.top) {
      const row = document.createElement("div");
      row.className = "row";
      row.innerHTML = "<span class='name'></span><div class='bar'><span></span></div>" +
        "<span class='pct'></span>";
      row.querySelector(".name").textContent = t.class;
      row.querySelector(".bar span").style.width = (100 * t.probability).toFixed(1) + "%";
      row.querySelector(".pct").textContent = (100 * t.probability).toFixed(1) + " %";
      box.appendChild(row);
    }
    for (const n of p.notes) {
      const note = document.createElement("div");
      note.className = "note";
      note.textContent = "note: " + n;
      box.appendChild(note);
    }
    out.appendChild(box);
  }
}
async function send(body, headers) {
  $("error").textContent = "";
  const r = await fetch("predict?top=" + TOP, {method: "POST", body: body, headers: headers || {}});
  const data = await r.json();
  if (!r.ok) { $("results").textContent = ""; $("error").textContent = data.error; return; }
  show(data);
}
function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  send(form);
}
$("files").addEventListener("change", (e) => upload(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files);
});
if (MODEL.kind === "image" && MODEL.channels === 1) {
  $("draw").style.display = "block";
  const c = $("canvas"), ctx = c.getContext("2d");
  let down = false;
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height); };
  clear();
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = "round"; ctx.lineJoin = "round";
  const at = (e) => { const r = c.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  c.addEventListener("pointerdown", (e) => {
    down = true; const [x, y] = at(e); ctx.beginPath(); ctx.moveTo(x, y);
  });
  c.addEventListener("pointermove", (e) => {
    if (!down) return; const [x, y] = at(e); ctx.lineTo(x, y); ctx.stroke();
  });
  window.addEventListener("pointerup", () => { down = false; });
  $("clear").addEventListener("click", () => { clear(); $("results").textContent = ""; });
  $("classify").addEventListener("click", () => {
    // Shrunk here to the model's own size, so the server sees an image of that size.
    const small = document.createElement("canvas");
    small.width = MODEL.width; small.height = MODEL.height;
    const s = small.getContext("2d");
    s.imageSmoothingEnabled = true; s.imageSmoothingQuality = "high";
    s.drawImage(c, 0, 0, small.width, small.height);
    small.toBlob((blob) => {
      const form = new FormData();
      form.append("files", blob, "drawing.png");
      send(form);
    }, "image/png");
  });
}
</script></body></html>
"""


def page_html(meta: dict[str, Any]) -> str:
    shape = [int(n) for n in meta["input_shape"][1:]]
    image = meta["input_kind"] == "image"
    model = {
        "classes": [str(c) for c in meta["classes"]],
        "kind": meta["input_kind"],
        "channels": shape[0],
        "height": shape[1] if image else 0,
        "width": shape[2] if image else 0,
    }
    size = f"{shape[2]}x{shape[1]} {'grey' if shape[0] == 1 else 'colour'} images" if image else "audio clips"
    about = (
        f"{meta['recipe_name']}, trained on {meta['dataset']} ({size}), {len(model['classes'])} classes; "
        f"checkpoint {meta['checkpoint']} ({meta['checkpoint_when']})."
    )
    return (
        _PAGE.replace("__TITLE__", html.escape(str(meta["recipe_name"])))
        .replace("__ABOUT__", html.escape(about))
        .replace("__ACCEPT__", "image/*" if image else "audio/*,.wav,.flac,.ogg")
        # JSON inside <script>: "<" escaped so no value can close the script element.
        .replace("__MODEL__", json.dumps(model).replace("<", "\\u003c"))
    )
