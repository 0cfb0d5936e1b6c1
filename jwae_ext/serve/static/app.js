// The search page: text, image and "more like this" queries against the JSON API
// (see docs/serve.md). Results are drawn with DOM calls only: no server text becomes HTML.
"use strict";

const form = document.getElementById("search-form");
const queryBox = document.getElementById("query");
const kBox = document.getElementById("k");
const upload = document.getElementById("upload");
const dropZone = document.getElementById("drop-zone");
const unknownWords = document.getElementById("unknown-words");
const message = document.getElementById("message");
const summary = document.getElementById("query-summary");
const grid = document.getElementById("results");
const footer = document.getElementById("footer");

function k() {
  return Number.parseInt(kBox.value, 10) || 12;
}

function say(text, isError) {
  message.textContent = text;
  message.classList.toggle("error", Boolean(isError));
}

// Send a request; on a refusal show the server's message and return null.
async function ask(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    say("The server cannot be reached: " + err.message, true);
    return null;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const why = body.error || response.statusText;
    say("The server refused the request (" + response.status + "): " + why, true);
    return null;
  }
  return body;
}

function show(answer, description) {
  grid.replaceChildren();
  unknownWords.textContent = answer.unknown_words.length
    ? "Not in the model's vocabulary (ignored): " + answer.unknown_words.join(", ")
    : "";
  if (answer.results.length === 0) {
    say("Nothing matches.", false);
    summary.textContent = "";
    return;
  }
  say("", false);
  summary.textContent = answer.results.length + " results for " + description +
    " in " + answer.took_ms.toFixed(1) + " ms. Select a picture to see more like it.";
  for (const hit of answer.results) {
    grid.append(tile(hit));
  }
}

function tile(hit) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.id = String(hit.id);
  button.dataset.score = String(hit.score);
  const label = hit.caption || hit.name || "image " + hit.id;
  button.title = "More like this: " + label;
  if (hit.thumbnail) {
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = label;
    img.loading = "lazy";
    button.append(img);
  } else {
    const none = document.createElement("span");
    none.className = "no-thumbnail";
    none.textContent = "no image file";
    button.append(none);
  }
  const text = document.createElement("span");
  text.className = "hit-text";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3) + " ";
  text.append(score, hit.caption || hit.name || "");
  button.append(text);
  button.addEventListener("click", () => moreLike(hit.id, label));
  item.append(button);
  return item;
}

async function searchText(text) {
  say("Searching…", false);
  // The address names the query: a search can be bookmarked, shared or reloaded.
  history.replaceState(null, "", "?" + new URLSearchParams({ q: text }));
  const answer = await ask("/api/search", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text: text, k: k() }),
  });
  if (answer) show(answer, "\u201c" + text + "\u201d");
}

async function moreLike(id, label) {
  say("Searching…", false);
  const answer = await ask("/api/search", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id: id, k: k() }),
  });
  if (answer) {
    show(answer, "pictures like " + label);
    const first = grid.querySelector("button");
    if (first) first.focus();
  }
}

async function searchImage(file) {
  say("Searching with " + file.name + "…", false);
  const data = new FormData();
  data.append("image", file);
  data.append("k", String(k()));
  const answer = await ask("/api/search/image", { method: "POST", body: data });
  if (answer) show(answer, "the image " + file.name);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = queryBox.value.trim();
  if (text) searchText(text);
  else say("Type some words to search for.", true);
});

upload.addEventListener("change", () => {
  if (upload.files.length) searchImage(upload.files[0]);
  upload.value = "";
});

for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  const files = event.dataTransfer.files;
  if (files.length) searchImage(files[0]);
});

async function describeIndex() {
  const info = await ask("/api/info");
  if (!info) return;
  kBox.max = String(info.max_k);
  const run = String(info.run).split("/").pop();
  footer.textContent = info.images + " images indexed \u00b7 model: run " + run +
    " (" + info.variant + ") \u00b7 vocabulary: " + info.vocab_size + " words";
}

describeIndex();
const asked = new URLSearchParams(location.search).get("q");
if (asked) {
  queryBox.value = asked;
  searchText(asked);
}
