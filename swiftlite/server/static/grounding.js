// Grounding: find the boxes a vision model wrote in its answer and draw them, labelled, over an image.
//
// Two conventions are read:
//  - Qwen-VL / Qwen2-VL: <ref>label</ref><box>(x1,y1),(x2,y2)</box> on a 0-1000 scale of the image (also the
//    special-token spelling <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>);
//    a box without its own <ref> takes the label of the ref before it.
//  - Qwen2.5-VL: JSON objects {"bbox_2d": [x1, y1, x2, y2], "label": "..."} in pixels of the image as the model
//    saw it, which Qwen2.5-VL's processor resizes to multiples of 28 (smart_resize); the boxes are scaled back
//    to the image's own size.
"use strict";

window.SwiftliteGrounding = (function () {
  const NUMBER = String.raw`(-?\d+(?:\.\d+)?)`;
  const POINT = String.raw`\(\s*${NUMBER}\s*,\s*${NUMBER}\s*\)`;
  const QWEN_VL = new RegExp(
    String.raw`(?:<ref>|<\|object_ref_start\|>)([\s\S]*?)(?:<\/ref>|<\|object_ref_end\|>)` +
    String.raw`|(?:<box>|<\|box_start\|>)\s*${POINT}\s*,\s*${POINT}\s*(?:<\/box>|<\|box_end\|>)`, "g");
  const BBOX_2D = new RegExp(String.raw`"bbox_2d"\s*:\s*\[\s*${NUMBER}\s*,\s*${NUMBER}\s*,\s*${NUMBER}\s*,\s*${NUMBER}\s*\]`);
  const LABEL = /"label"\s*:\s*"((?:[^"\\]|\\.)*)"/;
  const JSON_OBJECT = /\{[^{}]*"bbox_2d"[^{}]*\}/g;
  const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];

  // [{label, box: [x1, y1, x2, y2], scale: "k1000" | "pixels"}] in the order the answer gives them.
  function parseBoxes(text) {
    const boxes = [];
    let label = "";
    for (const match of text.matchAll(QWEN_VL)) {
      if (match[1] !== undefined) {
        label = match[1].trim();
      } else {
        boxes.push({ label, box: match.slice(2, 6).map(Number), scale: "k1000" });
      }
    }
    for (const match of text.matchAll(JSON_OBJECT)) {
      const bbox = BBOX_2D.exec(match[0]);
      if (!bbox) continue;
      const named = LABEL.exec(match[0]);
      let objectLabel = "";
      if (named) {
        try { objectLabel = JSON.parse('"' + named[1] + '"'); } catch (error) { objectLabel = named[1]; }
      }
      boxes.push({ label: objectLabel, box: bbox.slice(1, 5).map(Number), scale: "pixels" });
    }
    return boxes;
  }

  // Qwen2.5-VL's smart_resize: the size (multiples of 28) its processor gives an image of height x width.
  function smartResize(height, width, factor = 28, minPixels = 56 * 56, maxPixels = 28 * 28 * 16384) {
    let h = Math.max(factor, Math.round(height / factor) * factor);
    let w = Math.max(factor, Math.round(width / factor) * factor);
    if (h * w > maxPixels) {
      const beta = Math.sqrt((height * width) / maxPixels);
      h = Math.floor(height / beta / factor) * factor;
      w = Math.floor(width / beta / factor) * factor;
    } else if (h * w < minPixels) {
      const beta = Math.sqrt(minPixels / (height * width));
      h = Math.ceil((height * beta) / factor) * factor;
      w = Math.ceil((width * beta) / factor) * factor;
    }
    return [h, w];
  }

  // The box in the image's own pixels.
  function toPixels(entry, width, height) {
    const [x1, y1, x2, y2] = entry.box;
    if (entry.scale === "k1000") {
      return [x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000];
    }
    const [resizedH, resizedW] = smartResize(height, width);
    return [x1 * width / resizedW, y1 * height / resizedH, x2 * width / resizedW, y2 * height / resizedH];
  }

  // A figure with the image and an SVG overlay holding one <rect class="box"> and one <text class="box-label">
  // per box. The SVG's viewBox is the image's pixel grid, so it scales with the image at any display size.
  function figure(imageUrl, boxes, displayWidth) {
    const wrapper = document.createElement("figure");
    wrapper.className = "grounding";
    const frame = document.createElement("div");
    frame.className = "grounding-frame";
    const image = document.createElement("img");
    image.alt = "The last image of the conversation, with the " + boxes.length + " box(es) of this answer";
    const caption = document.createElement("figcaption");
    caption.textContent = boxes.map((entry) => entry.label || "(no label)").join(", ");
    frame.appendChild(image);
    wrapper.appendChild(frame);
    wrapper.appendChild(caption);
    image.addEventListener("load", () => {
      frame.appendChild(overlay(boxes, image.naturalWidth, image.naturalHeight, displayWidth));
      wrapper.dataset.drawn = String(boxes.length);
    }, { once: true });
    image.src = imageUrl;
    return wrapper;
  }

  function overlay(boxes, width, height, displayWidth) {
    // The SVG namespace is an identifier, never fetched.
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "grounding-overlay");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Boxes: " + boxes.map((entry) => entry.label || "(no label)").join(", "));
    const unit = width / displayWidth;  // one screen pixel in image pixels, at the figure's usual width
    boxes.forEach((entry, index) => {
      const colour = COLOURS[index % COLOURS.length];
      let [x1, y1, x2, y2] = toPixels(entry, width, height);
      [x1, x2] = [Math.min(x1, x2), Math.max(x1, x2)];
      [y1, y2] = [Math.min(y1, y2), Math.max(y1, y2)];
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("class", "box");
      rect.setAttribute("x", x1);
      rect.setAttribute("y", y1);
      rect.setAttribute("width", Math.max(x2 - x1, unit));
      rect.setAttribute("height", Math.max(y2 - y1, unit));
      rect.setAttribute("stroke", colour);
      rect.setAttribute("stroke-width", 2.5 * unit);
      svg.appendChild(rect);
      if (entry.label) {
        const label = document.createElementNS(ns, "text");
        label.setAttribute("class", "box-label");
        const fontSize = 13 * unit;
        label.setAttribute("x", x1 + 2 * unit);
        // Above the box when there is room, else just inside its top edge.
        label.setAttribute("y", y1 - 3 * unit > fontSize ? y1 - 3 * unit : y1 + fontSize);
        label.setAttribute("font-size", fontSize);
        label.setAttribute("fill", colour);
        label.setAttribute("stroke-width", 3 * unit);
        label.textContent = entry.label;
        svg.appendChild(label);
      }
    });
    return svg;
  }

  return { parseBoxes, smartResize, toPixels, figure };
})();
