// The chat page of `mm deploy`: it talks to this server's own OpenAI API (v1/models, v1/chat/completions).
// Model text only ever reaches the page through textContent (see markdown.js), never through innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), keyField: $("api-key-field"), key: $("api-key"), system: $("system"),
    temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"), messages: $("messages"),
    error: $("error"), form: $("composer"), attachments: $("attachments"), files: $("files"), input: $("input"),
    send: $("send"), stop: $("stop"), clear: $("clear"), dropOverlay: $("drop-overlay"),
  };
  const KEY_STORAGE = "swiftlite.apiKey";  // sessionStorage: the key lives as long as this tab, never on disk
  const AUDIO_FORMATS = { "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3",
    "audio/mp3": "mp3", "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg", "audio/mp4": "m4a",
    "audio/x-m4a": "m4a", "audio/webm": "webm" };

  const state = {
    models: [],        // the entries of GET v1/models
    history: [],       // {role: "user", text, images: [{name, url}], audios: [{name, url, data, format}]}
                       // and {role: "assistant", text, finish}
    pending: [],       // attachments for the next message: {kind: "image" | "audio", name, url, data, format}
    controller: null,  // the AbortController of the answer being streamed
  };

  // ---- errors in plain words ----------------------------------------------------------------------------
  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = false;
  }

  function hideError() {
    ui.error.hidden = true;
    ui.error.textContent = "";
  }

  async function serverMessage(response) {
    try {
      const body = await response.json();
      return (body && body.error && body.error.message) || JSON.stringify(body);
    } catch (error) {
      return response.statusText || "no details";
    }
  }

  async function showHttpError(response) {
    const detail = await serverMessage(response);
    const status = response.status;
    if (status === 401) {
      ui.keyField.hidden = false;
      ui.key.focus();
      showError(sessionStorage.getItem(KEY_STORAGE)
        ? "The server did not accept this API key. Check the key in the API key field, then send again."
        : "This server needs an API key (it was started with --api_key). Enter it in the API key field above, then send again.");
    } else if (status === 400) {
      showError("The server could not use this message: " + detail);
    } else if (status === 404) {
      showError("Not found on the server: " + detail);
    } else if (status === 413) {
      showError("The message is too large for the server; attach fewer or smaller files. (" + detail + ")");
    } else if (status === 429) {
      showError("The server is busy (too many requests are waiting). Wait a moment, then send again.");
    } else if (status === 503) {
      showError("The server is shutting down or not ready. Try again later.");
    } else {
      showError(`The server failed (HTTP ${status}): ${detail}`);
    }
  }

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // ---- models -------------------------------------------------------------------------------------------
  async function loadModels() {
    let response;
    try {
      response = await fetch("v1/models", { headers: authHeaders() });
    } catch (error) {
      showError("Cannot reach the server. Is `mm deploy` still running?");
      return;
    }
    if (!response.ok) {
      await showHttpError(response);
      return;
    }
    const previous = ui.model.value;
    state.models = (await response.json()).data || [];
    ui.model.replaceChildren(...state.models.map((model) => {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.parent ? `${model.id} (LoRA adapter on ${model.parent})` : model.id;
      return option;
    }));
    if (state.models.some((model) => model.id === previous)) ui.model.value = previous;
    modelChanged();
    hideError();
  }

  function currentModel() {
    return state.models.find((model) => model.id === ui.model.value);
  }

  // What the chosen model takes: its card's `modalities`, or images when it only says is_multimodal.
  function takes(kind) {
    const model = currentModel();
    if (!model) return kind === "image";
    if (Array.isArray(model.modalities)) return model.modalities.includes(kind);
    return kind === "image" ? model.is_multimodal !== false : false;
  }

  function modelChanged() {
    const kinds = [takes("image") && "image/*", takes("audio") && "audio/*"].filter(Boolean);
    ui.files.accept = kinds.join(",");
    $("attach-label").textContent = takes("audio") ? "Attach images or audio" : "Attach images";
    const model = currentModel();
    if (model && model.is_chat === false) {
      showError(`${model.id} is a base model without a chat template: this page needs a chat model.`);
    }
  }

  // ---- attachments ----------------------------------------------------------------------------------------
  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function audioFormat(file) {
    return AUDIO_FORMATS[file.type] || (file.name.split(".").pop() || "wav").toLowerCase();
  }

  async function addFiles(files) {
    for (const file of Array.from(files)) {
      const kind = file.type.startsWith("image/") ? "image" : file.type.startsWith("audio/") ? "audio" : null;
      if (!kind) {
        showError(`${file.name}: not an image or audio file.`);
        continue;
      }
      if (!takes(kind)) {
        showError(`${file.name}: the model ${ui.model.value} does not take ${kind}.`);
        continue;
      }
      const url = await readAsDataUrl(file);
      const item = { kind, name: file.name || `pasted ${kind}`, url };
      if (kind === "audio") {
        item.data = url.slice(url.indexOf(",") + 1);  // input_audio wants bare base64 and a format
        item.format = audioFormat(file);
      }
      state.pending.push(item);
    }
    renderPending();
  }

  function renderPending() {
    ui.attachments.replaceChildren(...state.pending.map((item, index) => {
      const chip = document.createElement("figure");
      chip.className = "attachment";
      chip.appendChild(mediaPreview(item));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", "Remove " + item.name);
      remove.addEventListener("click", () => {
        state.pending.splice(index, 1);
        renderPending();
        ui.input.focus();
      });
      chip.appendChild(remove);
      return chip;
    }));
  }

  function mediaPreview(item) {
    if (item.kind === "audio") {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.src = item.url;
      audio.setAttribute("aria-label", item.name);
      return audio;
    }
    const image = document.createElement("img");
    image.className = "thumb";
    image.src = item.url;
    image.alt = item.name;
    return image;
  }

  // ---- the conversation -----------------------------------------------------------------------------------
  function renderMessage(message) {
    const view = document.createElement("article");
    view.className = "message " + message.role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = message.role === "user" ? "You" : "Assistant";
    view.appendChild(who);
    if (message.role === "user") {
      const media = [...message.images, ...message.audios];
      if (media.length) {
        const strip = document.createElement("div");
        strip.className = "media";
        media.forEach((item) => strip.appendChild(mediaPreview(item)));
        view.appendChild(strip);
      }
    }
    const content = document.createElement("div");
    content.className = "content";
    if (message.role === "user") content.textContent = message.text;  // the user's words, as typed
    view.appendChild(content);
    ui.messages.appendChild(view);
    view.scrollIntoView({ block: "end" });
    return view;
  }

  function renderAnswer(message, view) {
    view.querySelector(".content").replaceChildren(window.SwiftliteMarkdown.render(message.text));
  }

  // The finished answer: its text, a note on how it ended, and its boxes drawn on the last image.
  function finishAnswer(message, view) {
    view.classList.remove("streaming");
    renderAnswer(message, view);
    const notes = { stopped: "Stopped.", length: "Cut at the max tokens setting.", abort: "Ended by the server." };
    const words = [message.text.trim() ? "" : "(The answer is empty or only blank space.)", notes[message.finish]];
    if (words.some(Boolean)) {
      const note = document.createElement("div");
      note.className = "note";
      note.textContent = words.filter(Boolean).join(" ");
      view.appendChild(note);
    }
    const boxes = window.SwiftliteGrounding.parseBoxes(message.text);
    const imageUrl = lastImageBefore(message);
    if (boxes.length && imageUrl) {
      view.appendChild(window.SwiftliteGrounding.figure(imageUrl, boxes, 320));
    }
    view.scrollIntoView({ block: "end" });
  }

  function lastImageBefore(message) {
    const end = state.history.indexOf(message);
    for (let i = (end < 0 ? state.history.length : end) - 1; i >= 0; i--) {
      const turn = state.history[i];
      if (turn.role === "user" && turn.images.length) return turn.images[turn.images.length - 1].url;
    }
    return null;
  }

  // The OpenAI messages: media as content parts (data URLs for images, base64 for input_audio).
  function buildMessages() {
    const messages = [];
    if (ui.system.value.trim()) messages.push({ role: "system", content: ui.system.value });
    for (const turn of state.history) {
      const previous = messages[messages.length - 1];
      if (turn.role === "assistant") {
        // Answers in a row (one shown by swiftliteRenderAnswer after a real one) are one turn to the server.
        if (!turn.text) continue;
        if (previous && previous.role === "assistant") previous.content += "\n\n" + turn.text;
        else messages.push({ role: "assistant", content: turn.text });
      } else if (!turn.images.length && !turn.audios.length) {
        messages.push({ role: "user", content: turn.text });
      } else {
        const parts = turn.images.map((image) => ({ type: "image_url", image_url: { url: image.url } }));
        turn.audios.forEach((audio) => parts.push({ type: "input_audio",
                                                    input_audio: { data: audio.data, format: audio.format } }));
        if (turn.text) parts.push({ type: "text", text: turn.text });
        messages.push({ role: "user", content: parts });
      }
    }
    return messages;
  }

  function numberSetting(input, fallback) {
    const value = parseFloat(input.value);
    return Number.isFinite(value) ? value : fallback;
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.hidden = !busy;
    document.body.classList.toggle("busy", busy);
  }

  // Take a turn back out (the request failed before any answer): its text and files return to the composer.
  function undoTurn(turn, turnView, answer, answerView) {
    state.history.splice(state.history.indexOf(turn), answer ? 2 : 1);
    turnView.remove();
    if (answerView) answerView.remove();
    if (!ui.input.value) ui.input.value = turn.text;
    state.pending = [...turn.images.map((i) => ({ kind: "image", ...i })),
                     ...turn.audios.map((a) => ({ kind: "audio", ...a })), ...state.pending];
    renderPending();
  }

  async function send() {
    if (state.controller) return;
    const text = ui.input.value.trim();
    if (!text && !state.pending.length) return;
    if (!ui.model.value) {
      showError("No model to send to: the model list did not load. Check the server, or enter the API key.");
      return;
    }
    hideError();
    const turn = { role: "user", text,
                   images: state.pending.filter((p) => p.kind === "image").map(({ name, url }) => ({ name, url })),
                   audios: state.pending.filter((p) => p.kind === "audio")
                     .map(({ name, url, data, format }) => ({ name, url, data, format })) };
    state.history.push(turn);
    const turnView = renderMessage(turn);
    ui.input.value = "";
    state.pending = [];
    renderPending();

    const answer = { role: "assistant", text: "", finish: null };
    const body = { model: ui.model.value, messages: buildMessages(), stream: true,
                   temperature: numberSetting(ui.temperature, 0.7), top_p: numberSetting(ui.topP, 1),
                   max_tokens: Math.round(numberSetting(ui.maxTokens, 512)) };
    state.history.push(answer);
    const answerView = renderMessage(answer);
    answerView.classList.add("streaming");
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let failed = false;
    try {
      const response = await fetch("v1/chat/completions", {
        method: "POST", signal: controller.signal, body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", ...authHeaders() },
      });
      if (!response.ok) {
        failed = true;
        await showHttpError(response);
        return;
      }
      await readStream(response, answer, answerView);
    } catch (error) {
      if (error.name === "AbortError") {
        answer.finish = "stopped";
      } else if (error.serverError) {
        showError("The server failed while answering: " + error.message);
      } else {
        failed = !answer.text;
        showError("The connection to the server was lost: " + error.message);
      }
    } finally {
      state.controller = null;
      setBusy(false);
      if (!state.history.includes(answer)) {
        // Cleared while streaming: the conversation is gone, nothing to finish or restore.
      } else if (failed || (answer.finish === "stopped" && !answer.text)) {
        undoTurn(turn, turnView, answer, answerView);
      } else {
        finishAnswer(answer, answerView);
      }
      ui.input.focus();
    }
  }

  // Server-sent events: "data: {chunk}" blocks separated by a blank line, ended by "data: [DONE]".
  async function readStream(response, answer, view) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let scheduled = false;
    const redraw = () => {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => { scheduled = false; renderAnswer(answer, view); });
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          const error = new Error(chunk.error.message || "unknown error");
          error.serverError = true;
          throw error;
        }
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          answer.text += choice.delta.content;
          redraw();
        }
        if (choice.finish_reason) answer.finish = choice.finish_reason;
      }
    }
  }

  function stop() {
    if (state.controller) state.controller.abort();  // the server stops generating when the connection closes
  }

  function clear() {
    stop();
    state.history = [];
    state.pending = [];
    ui.messages.replaceChildren();
    renderPending();
    hideError();
    ui.input.focus();
  }

  // ---- wiring ---------------------------------------------------------------------------------------------
  ui.form.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.stop.addEventListener("click", stop);
  ui.clear.addEventListener("click", clear);
  ui.model.addEventListener("change", () => { hideError(); modelChanged(); });
  ui.files.addEventListener("change", async () => { await addFiles(ui.files.files); ui.files.value = ""; });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    } else if (event.key === "Escape") {
      stop();
    }
  });
  ui.input.addEventListener("paste", (event) => {
    const files = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
  ui.key.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); ui.key.blur(); }  // blur commits: "change" follows
  });
  ui.key.addEventListener("change", () => {
    const key = ui.key.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });

  // Drag and drop anywhere on the page.
  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    ui.dropOverlay.hidden = false;
  });
  window.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) ui.dropOverlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    ui.dropOverlay.hidden = true;
    if (!hasFiles(event)) return;
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });

  // A hook for tests and demos: show `text` as an assistant answer (grounding boxes included), as if the
  // model had written it, without calling the model.
  window.swiftliteRenderAnswer = (text) => {
    const message = { role: "assistant", text: String(text), finish: "stop" };
    state.history.push(message);
    const view = renderMessage(message);
    finishAnswer(message, view);
    return view;
  };

  if (sessionStorage.getItem(KEY_STORAGE)) {
    ui.keyField.hidden = false;
    ui.key.value = sessionStorage.getItem(KEY_STORAGE);
  }
  loadModels();
  ui.input.focus();
})();
