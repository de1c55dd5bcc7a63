// The web page's behaviour: choose images, ask, follow the job to its answer.
//
// It is a client of the public API like any other, on the same origin (relative URLs, so the
// page also works behind a proxy under a sub-path):
//   POST v1/jobs                 multipart: one "image" part per image, "question", options;
//                                an Idempotency-Key, kept until the outcome is known, so that
//                                asking again after a lost reply cannot queue the job twice
//   GET  v1/jobs/<id>?wait=N     a long poll: answers as soon as the job finishes, otherwise
//                                after N s with the job as it is (queue position, running);
//                                one request at a time, never a timer firing on its own
//   POST v1/jobs/<id>/cancel
// The API key lives in this tab's sessionStorage only; it is sent as "Authorization: Bearer".
// Text from the API is shown with textContent, never parsed as HTML.

const WAIT_S = 5; // how often, at most, the queue position is brought up to date
const MAX_BACKOFF_S = 30; // longest pause between attempts while the API cannot be reached
const KEY_STORAGE = "internvl-queue.api_key";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

const $ = (id) => document.getElementById(id);
const form = $("ask");
const fileInput = $("images");
const drop = $("drop");
const chosenList = $("chosen");
const question = $("question");
const apiKey = $("api_key");
const submitButton = $("submit");
const cancelButton = $("cancel");

let chosen = []; // the File objects to send, in order
let idempotencyKey = newIdempotencyKey();
// The job this page follows: {id, auth, controller}. ``auth`` holds the headers it was submitted
// with: a job belongs to its key, so it is read and canceled with that key whatever the field
// says now.
let current = null;

// ---- the API key: this tab only -------------------------------------------------------------

apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
apiKey.addEventListener("input", () => {
  const key = apiKey.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
});

function authHeaders() {
  const key = apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---- choosing images --------------------------------------------------------------------------

fileInput.addEventListener("change", () => {
  addFiles(fileInput.files);
  fileInput.value = ""; // choosing the same file again still fires "change"
});
// Files dropped anywhere on the page are taken: a browser left to itself would open a file
// dropped beside the zone in place of the page, and lose what was typed.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
drop.addEventListener("dragenter", () => drop.classList.add("over"));
drop.addEventListener("dragleave", () => drop.classList.remove("over"));

function addFiles(files) {
  // Whatever was chosen goes to the API, which says in words what it refuses and why.
  chosen.push(...files);
  formChanged();
  drawChosen();
}

function drawChosen() {
  for (const img of chosenList.querySelectorAll("img")) URL.revokeObjectURL(img.src);
  chosenList.replaceChildren(
    ...chosen.map((file, index) => {
      const item = document.createElement("li");
      const preview = document.createElement("img");
      preview.src = URL.createObjectURL(file);
      preview.alt = "";
      const name = document.createElement("span");
      name.textContent = `${file.name} (${formatBytes(file.size)})`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove ${file.name}`);
      remove.addEventListener("click", () => {
        chosen.splice(index, 1);
        formChanged();
        drawChosen();
      });
      item.append(preview, name, remove);
      return item;
    }),
  );
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// ---- asking -----------------------------------------------------------------------------------

form.addEventListener("input", formChanged);

function formChanged() {
  // A different request needs a different key (the API refuses a key reused for another one).
  idempotencyKey = newIdempotencyKey();
}

function newIdempotencyKey() {
  // crypto.randomUUID exists only in secure contexts; a page served over plain http on a LAN
  // address is not one, but getRandomValues is there everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  stopFollowing();
  const body = new FormData();
  for (const file of chosen) body.append("image", file, file.name);
  body.append("question", question.value);
  for (const name of ["max_new_tokens", "max_tiles"]) {
    const value = $(name).value.trim();
    if (value) body.append(name, value);
  }
  showJobSection();
  $("result").hidden = true;
  $("job_id").textContent = "";
  cancelButton.hidden = true;
  setStatus("Uploading…");
  submitButton.disabled = true;
  const auth = authHeaders();
  let reply;
  try {
    reply = await fetch("v1/jobs", {
      method: "POST",
      body,
      headers: { ...auth, "Idempotency-Key": idempotencyKey },
    });
  } catch (error) {
    // The key is kept: asking again sends the same request, which the API answers with the job
    // it may have queued already instead of queueing a second one.
    setStatus("");
    showError(
      `The request did not reach the API, or its answer did not come back (${error.message}). ` +
        "Check the connection and ask again.",
    );
    return;
  } finally {
    submitButton.disabled = false;
  }
  if (reply.status >= 500) {
    setStatus("");
    showError(await errorMessage(reply)); // the outcome is unknown: the key is kept
    return;
  }
  idempotencyKey = newIdempotencyKey();
  if (!reply.ok) {
    setStatus("");
    showError(await errorMessage(reply));
    return;
  }
  follow(await reply.json(), auth);
});

cancelButton.addEventListener("click", async () => {
  if (!current) return;
  const { id, auth } = current;
  cancelButton.disabled = true;
  try {
    const reply = await fetch(`v1/jobs/${encodeURIComponent(id)}/cancel`, {
      method: "POST",
      headers: auth,
    });
    if (!reply.ok) {
      showError(await errorMessage(reply));
      return;
    }
    const job = await reply.json();
    if (current?.id === id) show(job); // the long poll brings the end of a running job
  } catch (error) {
    showError(`The cancel did not reach the API (${error.message}); try again.`);
  } finally {
    cancelButton.disabled = false;
  }
});

// ---- following a job --------------------------------------------------------------------------

function stopFollowing() {
  current?.controller.abort();
  current = null;
}

async function follow(job, auth) {
  const controller = new AbortController();
  const { signal } = controller;
  current = { id: job.id, auth, controller };
  show(job);
  let failures = 0;
  while (!TERMINAL.has(job.status) && !signal.aborted) {
    let reply;
    try {
      reply = await fetch(`v1/jobs/${encodeURIComponent(job.id)}?wait=${WAIT_S}`, {
        headers: auth,
        cache: "no-store",
        signal,
      });
    } catch (error) {
      if (signal.aborted) return;
      failures += 1;
      const pause = Math.min(2 ** failures, MAX_BACKOFF_S);
      setStatus(`The API cannot be reached (${error.message}); trying again in ${pause} s…`);
      await sleep(pause, signal);
      continue;
    }
    failures = 0;
    if (reply.status === 429 || reply.status === 503) {
      // Passing trouble (Redis restarting, an API process stopping): ask again when told to.
      const pause = retryAfter(reply) || 1;
      setStatus(`${await errorMessage(reply)} (trying again in ${pause} s)`);
      await sleep(pause, signal);
      continue;
    }
    if (!reply.ok) {
      if (!signal.aborted) {
        setStatus("");
        showError(await errorMessage(reply));
        cancelButton.hidden = true;
      }
      return;
    }
    const next = await reply.json();
    if (signal.aborted) return;
    job = next;
    show(job);
    // An API holding as many long polls as it may answers at once and says when to come back.
    const pause = retryAfter(reply);
    if (pause && !TERMINAL.has(job.status)) await sleep(pause, signal);
  }
}

function show(job) {
  showJobSection();
  const finished = TERMINAL.has(job.status);
  cancelButton.hidden = finished;
  $("job_id").textContent = `Job ${job.id}`;
  $("result").hidden = job.status !== "succeeded";
  if (job.status === "queued") {
    setStatus(
      job.queue_position ? `Queued: number ${job.queue_position} in line.` : "Queued.",
    );
  } else if (job.status === "running") {
    setStatus(job.cancel_requested_at ? "Running; cancel requested…" : "Running…");
  } else if (job.status === "succeeded") {
    setStatus("Done.");
    showResult(job.result);
  } else {
    setStatus(job.status === "canceled" ? "Canceled." : "Failed.");
    if (job.error) showError(job.error.message);
  }
}

function showResult(result) {
  $("answer").textContent = result.answer;
  const t = result.timings_ms ?? {};
  $("timings").textContent = ["queued", "preprocess", "inference", "total"]
    .filter((name) => t[name] !== undefined)
    .map((name) => `${name} ${Number(t[name]).toFixed(1)}`)
    .join(" · ");
  const u = result.usage ?? {};
  $("usage").textContent =
    `prompt ${u.prompt_tokens}, answer ${u.completion_tokens} (image tiles ${u.image_tiles})`;
  const batch = result.batch_size ? `, in a batch of ${result.batch_size}` : "";
  $("model").textContent = `${result.model}${batch}`;
}

// ---- small helpers ----------------------------------------------------------------------------

function showJobSection() {
  $("job").hidden = false;
  const error = $("error");
  error.hidden = true;
  error.textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  $("job").hidden = false;
  const error = $("error");
  error.textContent = message;
  error.hidden = false;
}

async function errorMessage(reply) {
  // The API's errors are {"error": {"code", "message"}}; a proxy in front may answer otherwise.
  try {
    const body = await reply.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not JSON: fall through
  }
  return `The API answered ${reply.status} ${reply.statusText}.`.replace(" .", ".");
}

function retryAfter(reply) {
  const seconds = Number(reply.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, MAX_BACKOFF_S) : 0;
}

function sleep(seconds, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, seconds * 1000);
    signal.addEventListener("abort", done);
  });
}

// ---- the service's state, once, when the page opens -------------------------------------------

async function describeService() {
  const line = $("service");
  try {
    const body = await (await fetch("readyz", { cache: "no-store" })).json();
    const ready = body.status === "ready" ? "Ready" : "Not ready (jobs wait in the queue)";
    const keys =
      body.auth === "api_keys"
        ? "An API key is required."
        : body.auth === "open"
          ? "No API key is needed."
          : "";
    line.textContent = `${ready}: ${body.message}. ${keys}`.trim();
  } catch (error) {
    line.textContent = `The service's state is unknown (${error.message}).`;
  }
}

describeService();
