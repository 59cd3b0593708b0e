/* mmccd case view: three NiiVue instances (axial, coronal, sagittal) linked by one crosshair.
 * State comes from <script id="mmccd-data"> (written by mmccd.evaluation.viewer). The page reports what
 * happened in #mmccd-status: data-state = loading | loaded | webgl-missing | error, data-errors = count,
 * data-drawn = non-black pixels per view, so a headless browser can check it from the DOM.
 * Open with #vox=i,j,k (native voxel indices of the input) to start the crosshair there, &bg=N to start on
 * the N-th background (0 = the input). */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const status = $("mmccd-status");
  const errors = [];
  function recordError(msg) {
    errors.push(String(msg));
    status.dataset.errors = String(errors.length);
    $("mmccd-errors").textContent = errors.join("\n");
  }
  window.addEventListener("error", (e) => recordError(e.message || e));
  window.addEventListener("unhandledrejection", (e) => recordError((e.reason && e.reason.message) || e.reason));
  const consoleError = console.error.bind(console);
  console.error = (...args) => { recordError(args.map(String).join(" ")); consoleError(...args); };
  function setState(state, text) { status.dataset.state = state; status.className = state; status.textContent = text; }

  const data = JSON.parse($("mmccd-data").textContent);
  const shape = data.shape;
  const A = data.affine;
  const PLANES = [["axial", 0], ["coronal", 1], ["sagittal", 2]];  // niivue SLICE_TYPE values
  const fmt = (x) => (x === null || x === undefined || !isFinite(x)) ? "–" : Number(x).toPrecision(4);
  const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;

  // ---- voxel bookkeeping: native (file) voxel <-> RAS voxel <-> niivue's frac ((vox + 0.5) / dims in RAS)
  const rasDims = data.ras_axes.map(([p]) => shape[p]);
  function nativeToRas(v) { return data.ras_axes.map(([p, flip]) => flip ? shape[p] - 1 - v[p] : v[p]); }
  function rasToNative(r) {
    const v = [0, 0, 0];
    data.ras_axes.forEach(([p, flip], i) => { v[p] = flip ? shape[p] - 1 - r[i] : r[i]; });
    return v;
  }
  function fracToRas(f) { return f.map((x, i) => Math.min(rasDims[i] - 1, Math.max(0, Math.round(x * rasDims[i] - 0.5)))); }
  function rasToFrac(r) { return r.map((x, i) => (x + 0.5) / rasDims[i]); }
  function worldMM(v) { return [0, 1, 2].map((r) => A[r][0] * v[0] + A[r][1] * v[1] + A[r][2] * v[2] + A[r][3]); }
  function voxelValue(vol, v) {  // raw value in native (x fastest) order, scaled as NIfTI says
    const idx = v[0] + shape[0] * (v[1] + shape[1] * v[2]);
    const h = vol.hdr, slope = (isFinite(h.scl_slope) && h.scl_slope !== 0) ? h.scl_slope : 1;
    return vol.img[idx] * slope + (isFinite(h.scl_inter) ? h.scl_inter : 0);
  }

  // ---- fallback: pre-rendered axial slices
  function showFallback(reason) {
    $("viewer").hidden = true;
    $("fallback").hidden = false;
    $("fallback-reason").textContent = reason;
    const slices = data.fallback, slider = $("fb-slider");
    if (!slices.length) { $("fb-label").textContent = "no pre-rendered slices in this page"; return; }
    const startK = nativeToRas(data.start_vox)[2];
    let best = 0;
    slices.forEach((s, i) => { if (Math.abs(s.k - startK) < Math.abs(slices[best].k - startK)) best = i; });
    slider.max = String(slices.length - 1);
    slider.value = String(best);
    const show = () => {
      const s = slices[Number(slider.value)];
      $("fb-img").src = "data:image/png;base64," + s.png;
      $("fb-label").textContent = `${Number(slider.value) + 1} / ${slices.length} (z = ${s.z_mm} mm)`;
    };
    slider.addEventListener("input", show);
    show();
  }

  function hasWebGL2() {
    try { return !!document.createElement("canvas").getContext("webgl2"); } catch (e) { return false; }
  }

  // ---- the viewer
  const views = [];  // {plane, nv, bg, map, outline}
  const cache = {};  // decoded NVImages, cloned for each view
  let syncing = false;

  async function decoded(key) {
    if (!cache[key]) cache[key] = await niivue.NVImage.loadFromBase64({ base64: data.volumes[key], name: key + ".nii.gz" });
    return cache[key];
  }
  async function volume(key, opts) {
    const v = (await decoded(key)).clone();
    v.name = key;
    if (opts.colormap) v.colormap = opts.colormap;
    if (opts.cal) { v.cal_min = opts.cal[0]; v.cal_max = opts.cal[1]; }
    if (opts.label) v.setColormapLabel(opts.label);
    v.opacity = opts.opacity === undefined ? 1 : opts.opacity;
    return v;
  }
  function outlineLut() {
    const c = data.colors, p = $("show-pred").checked && data.has_pred, g = $("show-gt").checked && data.has_gt;
    const both = p && g ? c.both : p ? c.prediction : c["ground truth"];
    const cols = [[0, 0, 0], c.prediction, c["ground truth"], both];
    return { R: cols.map((x) => x[0]), G: cols.map((x) => x[1]), B: cols.map((x) => x[2]),
             A: [0, p ? 255 : 0, g ? 255 : 0, (p || g) ? 255 : 0], I: [0, 1, 2, 3],
             labels: ["", "prediction", "ground truth", "both"] };
  }

  function readout(frac) {
    const ras = fracToRas(frac), vox = rasToNative(ras), mm = worldMM(vox), v = views[0];
    const score = voxelValue(v.map, vox);
    const scoreNiivue = v.map.getValue(...v.nv.frac2vox(frac));
    const bg = voxelValue(v.bg, vox);
    const el = $("readout");
    el.dataset.vox = vox.join(",");
    el.dataset.background = v.bgLabel;
    el.dataset.mm = mm.map((x) => x.toFixed(2)).join(",");
    el.dataset.score = String(score);
    el.dataset.scoreNiivue = String(scoreNiivue);
    let text = `voxel (${vox.join(", ")}) · (${mm.map((x) => x.toFixed(1)).join(", ")}) mm · ` +
               `${v.bgLabel} ≈ ${fmt(bg)} · anomaly score ${fmt(score)}`;
    if (data.threshold !== null) text += score >= data.threshold ? " (≥ validation threshold)" : " (< validation threshold)";
    if (cache.masks) {
      const bits = voxelValue(cache.masks, vox);
      el.dataset.pred = String(bits & 1);
      el.dataset.gt = String((bits >> 1) & 1);
      if (data.has_pred) text += ` · prediction: ${bits & 1 ? "yes" : "no"}`;
      if (data.has_gt) text += ` · ground truth: ${(bits >> 1) & 1 ? "yes" : "no"}`;
    }
    el.textContent = text;
  }
  function moveTo(frac, except) {
    syncing = true;
    for (const v of views) {
      if (v.nv === except) continue;
      v.nv.scene.crosshairPos = Float32Array.from(frac);
      v.nv.drawScene();
    }
    syncing = false;
    readout(frac);
  }
  function redraw() { for (const v of views) v.nv.updateGLVolume(); }

  function setupControls() {
    const [lo, hi] = data.map_range, step = (hi - lo) / 1000;
    const thr = $("threshold"), num = $("threshold-num"), op = $("opacity");
    for (const el of [thr, num]) { el.min = String(lo); el.max = String(hi); el.step = String(step); }
    const setThreshold = (t) => {
      t = Math.min(hi, Math.max(lo, Number(t)));
      thr.value = String(t); num.value = fmt(t);
      for (const v of views) { v.map.cal_min = t; v.map.cal_max = Math.max(data.display_max, t + step); }
      redraw();
    };
    thr.addEventListener("input", () => setThreshold(thr.value));
    num.addEventListener("change", () => setThreshold(num.value));
    if (data.threshold !== null) {
      const mark = document.createElement("option");
      mark.value = String(data.threshold);
      $("threshold-marks").appendChild(mark);
      $("threshold-reset").textContent = `validation threshold (${fmt(data.threshold)})`;
      $("threshold-reset").addEventListener("click", () => setThreshold(data.threshold));
      $("threshold-note").textContent = `The overlay shows scores ≥ the threshold; the validation threshold ` +
        `${fmt(data.threshold)} is marked on the slider. The prediction outline is the mask at the validation threshold ` +
        `and does not follow the slider.`;
    } else {
      $("threshold-reset").hidden = true;
      $("threshold-note").textContent = `No validation threshold was given; the overlay starts at the 99th percentile ` +
        `of the scores (${fmt(data.shown_threshold)}).`;
    }
    setThreshold(data.shown_threshold);
    op.value = String(data.opacity); $("opacity-out").textContent = op.value;
    op.addEventListener("input", () => {
      $("opacity-out").textContent = op.value;
      for (const v of views) v.map.opacity = Number(op.value);
      redraw();
    });
    $("pred-swatch").style.background = rgb(data.colors.prediction);
    $("gt-swatch").style.background = rgb(data.colors["ground truth"]);
    $("pred-toggle").hidden = !data.has_pred;
    $("gt-toggle").hidden = !data.has_gt;
    for (const id of ["show-pred", "show-gt"]) {
      $(id).addEventListener("change", () => {
        for (const v of views) if (v.outline) v.outline.setColormapLabel(outlineLut());
        redraw();
      });
    }
    const sel = $("background");
    data.backgrounds.forEach((b, i) => { const o = document.createElement("option"); o.value = String(i); o.textContent = b.label; sel.appendChild(o); });
    sel.addEventListener("change", () => setBackground(Number(sel.value)).catch((e) => recordError(e)));
  }

  async function setBackground(i) {
    const b = data.backgrounds[i];
    for (const v of views) {
      const next = await volume(b.key, { colormap: "gray", cal: b.range });
      v.nv.volumes[0] = next;
      v.nv.setVolume(next, 0);  // one upload, as at the start
      v.bg = next; v.bgLabel = b.label;
    }
    moveTo(views[0].nv.scene.crosshairPos, null);
  }

  function drawnPixels(nv) {  // non-black pixels of a canvas, read right after a draw
    nv.drawScene();
    const gl = nv.gl, w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
    const px = new Uint8Array(4 * w * h);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
    let n = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 24) n++;
    return n;
  }

  const t0 = performance.now(), timing = [];
  const mark = (what) => { timing.push(`${what}:${Math.round(performance.now() - t0)}`); status.dataset.ms = timing.join(","); };
  async function start() {
    const bg0 = data.backgrounds[0];
    for (const [plane, sliceType] of PLANES) {
      const nv = new niivue.Niivue({
        backColor: [0, 0, 0, 1], crosshairColor: [1, 0.85, 0.2, 0.7], crosshairWidth: 1, crosshairGap: 12, show3Dcrosshair: false,
        isColorbar: false, dragAndDropEnabled: false, logLevel: "error", loadingText: "",
        isRadiologicalConvention: false,
      });
      await nv.attachToCanvas($("view-" + plane));
      nv.setInterpolation(true);  // nearest: one voxel, one colour, crisp outlines
      const v = { plane, nv, bgLabel: bg0.label };
      v.bg = await volume(bg0.key, { colormap: "gray", cal: bg0.range });
      v.map = await volume("map", { colormap: "inferno", cal: [data.shown_threshold, data.display_max], opacity: data.opacity });
      if (data.volumes["outline_" + plane]) v.outline = await volume("outline_" + plane, { label: outlineLut() });
      nv.opts.sliceType = sliceType;
      nv.volumes = [v.bg, v.map, ...(v.outline ? [v.outline] : [])];
      nv.setVolume(v.bg, 0);  // one upload of all layers (addVolume would upload them all again each time)
      mark("upload-" + plane);
      nv.onLocationChange = () => { if (!syncing) moveTo(nv.scene.crosshairPos, nv); };
      views.push(v);
    }
    if (data.volumes.masks) await decoded("masks");
    setupControls();
    let startVox = data.start_vox;
    const m = /vox=(\d+),(\d+),(\d+)/.exec(window.location.hash);
    if (m) startVox = [Number(m[1]), Number(m[2]), Number(m[3])];
    const bg = /bg=(\d+)/.exec(window.location.hash);
    if (bg && Number(bg[1]) > 0 && Number(bg[1]) < data.backgrounds.length) {
      $("background").value = bg[1];
      await setBackground(Number(bg[1]));
    }
    moveTo(rasToFrac(nativeToRas(startVox)), null);
    const drawn = views.map((v) => drawnPixels(v.nv));
    status.dataset.drawn = drawn.join(",");
    mark("drawn");
    if (drawn.some((n) => n === 0)) throw new Error(`a view drew nothing (non-black pixels per view: ${drawn.join(", ")})`);
    setState("loaded", `NiiVue ${data.niivue_version} · ${shape.join(" × ")} voxels, orientation ${data.axcodes}` +
             (data.has_pred ? ` · prediction ${data.pred_voxels} voxels` : "") + (data.has_gt ? ` · ground truth ${data.gt_voxels} voxels` : ""));
  }

  if (!hasWebGL2()) {
    setState("webgl-missing", "WebGL2 is not available in this browser, so the interactive three-plane viewer cannot run. " +
             "Below are pre-rendered axial slices; open this file in a current Chrome, Firefox, Edge or Safari for the viewer.");
    showFallback("Pre-rendered axial slices: the input, the anomaly map from the threshold up, the outlines.");
  } else {
    start().catch((e) => {
      recordError(e && e.stack ? e.stack : e);
      setState("error", "The viewer failed to start: " + (e && e.message ? e.message : e) + ". Showing pre-rendered slices instead.");
      showFallback("The interactive viewer failed to start; showing pre-rendered axial slices.");
    });
  }
})();
