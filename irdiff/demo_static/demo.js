// irdiff demo page: talks only to the server that served it (see irdiff/demo.py for the API).
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function modelInfo(id) {
  return config.models.find((m) => m.id === id) || null;
}

// show a model's sampling settings (diffusion models only), η only for samplers that take it
function fillSettings(card) {
  const info = modelInfo($("model-" + card).value);
  const box = $("diffusion-" + card);
  box.hidden = !info || !info.diffusion;
  if (!info || !info.diffusion) return;
  const sampler = $("sampler-" + card);
  sampler.replaceChildren(...info.samplers.map((s) => new Option(s, s, s === info.sampler, s === info.sampler)));
  const steps = $("steps-" + card);
  steps.max = info.max_steps;
  steps.value = Math.min(info.steps, info.max_steps);
  $("eta-" + card).value = info.eta;
  updateEta(card);
}

function updateEta(card) {
  const info = modelInfo($("model-" + card).value);
  const eta = $("eta-" + card);
  eta.disabled = !info || !info.eta_samplers.includes($("sampler-" + card).value);
}

async function loadConfig() {
  const res = await fetch("/api/config");
  config = await res.json();
  for (const m of config.models) {
    $("model-a").add(new Option(m.label, m.id));
    $("model-b").add(new Option(m.label, m.id));
  }
  for (const s of config.samples) $("sample").add(new Option(s, s));
  const lim = config.limits;
  $("limits").textContent = `Limits: ${(lim.max_upload_bytes / 2 ** 20).toFixed(0)} MB per upload, ` +
    `${(lim.max_pixels / 1e6).toFixed(1)} megapixels per result; large images are restored in tiles.`;
  for (const card of ["a", "b"]) {
    fillSettings(card);
    $("model-" + card).addEventListener("change", () => fillSettings(card));
    $("sampler-" + card).addEventListener("change", () => updateEta(card));
  }
}

function jobParams(card) {
  const p = new URLSearchParams();
  const info = modelInfo($("model-" + card).value);
  p.set("model", info.id);
  p.set("seed", $("seed").value || "0");
  if (info.diffusion) {
    p.set("sampler", $("sampler-" + card).value);
    p.set("steps", $("steps-" + card).value);
    if (!$("eta-" + card).disabled) p.set("eta", $("eta-" + card).value);
  }
  if ($("degrade").checked) {
    p.set("blur", $("blur").value || "0");
    p.set("noise", $("noise").value || "0");
    if ($("down").checked) p.set("down", "1");
  }
  const file = $("file").files[0];
  if (file) p.set("name", file.name);
  else p.set("sample", $("sample").value);
  return p;
}

async function submit(card) {
  const file = $("file").files[0];
  const res = await fetch("/api/jobs?" + jobParams(card).toString(), {
    method: "POST",
    body: file || new Blob([]),
    headers: { "Content-Type": "application/octet-stream" },
  });
  const body = await res.json().catch(() => ({ error: `the server answered ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `the server answered ${res.status}`);
  return body.id;
}

function fmtScores(s) {
  if (!s) return "";
  const psnr = s.psnr === null ? "∞" : s.psnr.toFixed(2);
  return `PSNR ${psnr} dB, SSIM ${s.ssim.toFixed(4)}`;
}

// poll a job until it ends; the progress bar follows the sampler's steps over all tiles
async function follow(card, id) {
  $("job-" + card).hidden = false;
  $("name-" + card).textContent = modelInfo($("model-" + card).value).label;
  for (;;) {
    const st = await (await fetch("/api/jobs/" + id)).json();
    if (st.error && !st.state) throw new Error(st.error);
    $("progress-" + card).value = st.progress;
    if (st.state === "queued") {
      $("state-" + card).textContent = st.position ? `queued (${st.position} ahead)` : "queued";
    } else if (st.state === "running") {
      $("state-" + card).textContent = `running ${Math.round(st.progress * 100)} %`;
    } else if (st.state === "error") {
      $("state-" + card).textContent = "failed";
      throw new Error(st.error);
    } else {
      $("state-" + card).textContent = `done in ${st.seconds.toFixed(1)} s`;
      return st;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

function loaded(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve();
    img.onerror = () => reject(new Error("could not load " + src));
    img.src = src;
  });
}

async function show(card, id, st) {
  const base = "/api/jobs/" + id;
  const label = modelInfo($("model-" + card).value).label;
  const waits = [loaded($("img-" + card), base + "/output.png")];
  let cap = `${label}: ${st.size[0]}×${st.size[1]}, ${st.seconds.toFixed(1)} s`;
  if (st.metrics && st.metrics.output) cap += "; " + fmtScores(st.metrics.output);
  else if (st.metrics && st.metrics.input !== undefined) cap += "; not scored (size differs from the clean image)";
  $("cap-" + card).textContent = cap;
  const link = $("download-" + card);
  link.href = base + "/output.png?download=1";
  link.download = `restored_${id}.png`;
  $("fig-" + card).hidden = false;
  if (card === "a") {
    waits.push(loaded($("img-input"), base + "/input.png"));
    waits.push(loaded($("compare-before"), base + "/input.png"));
    waits.push(loaded($("compare-after"), base + "/output.png"));
    let incap = "input (what the model saw)";
    if (st.metrics && st.metrics.input) incap += "; " + fmtScores(st.metrics.input);
    $("cap-input").textContent = incap;
    $("fig-clean").hidden = !st.images.includes("clean");
    if (st.images.includes("clean")) waits.push(loaded($("img-clean"), base + "/clean.png"));
  }
  $("results").hidden = false;
  await Promise.all(waits);
}

function setCompare() {
  const v = $("compare-range").value;
  $("compare-after").style.clipPath = `inset(0 0 0 ${v}%)`;
}

async function run() {
  showError("");
  const file = $("file").files[0];
  if (!file && !$("sample").value) return showError("Choose an image to upload, or a sample.");
  if (file && file.size > config.limits.max_upload_bytes) {
    return showError(`${file.name}: ${(file.size / 2 ** 20).toFixed(1)} MB is over the demo's upload limit of ` +
      `${(config.limits.max_upload_bytes / 2 ** 20).toFixed(0)} MB`);
  }
  const cards = $("model-b").value ? ["a", "b"] : ["a"];
  $("run").disabled = true;
  $("job-b").hidden = true;
  $("fig-b").hidden = true;
  document.body.dataset.state = "running";
  try {
    const ids = {};
    for (const card of cards) ids[card] = await submit(card); // the server queues them: one job at a time
    await Promise.all(cards.map(async (card) => show(card, ids[card], await follow(card, ids[card]))));
    document.body.dataset.state = "done";
  } catch (e) {
    showError(e.message);
    document.body.dataset.state = "error";
  } finally {
    $("run").disabled = false;
  }
}

function preview() {
  const img = $("preview");
  const file = $("file").files[0];
  if (file) {
    $("sample").value = "";
    img.src = URL.createObjectURL(file);
  } else if ($("sample").value) {
    img.src = "/api/sample/" + encodeURIComponent($("sample").value) + ".png";
  }
  img.hidden = !file && !$("sample").value;
}

document.addEventListener("DOMContentLoaded", async () => {
  $("file").addEventListener("change", preview);
  $("sample").addEventListener("change", () => { $("file").value = ""; preview(); });
  $("run").addEventListener("click", run);
  $("compare-range").addEventListener("input", setCompare);
  const syncDegrade = () => { $("degrade-options").hidden = !$("degrade").checked; };
  $("degrade").addEventListener("change", syncDegrade);
  syncDegrade();
  setCompare();
  try {
    await loadConfig();
    document.body.dataset.state = "ready";
  } catch (e) {
    showError("could not load the demo's settings: " + e.message);
  }
});
