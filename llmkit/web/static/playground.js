// The playground's script: runs the form through the API's own endpoint,
// POST /v1/chat/completions with stream: true, and shows the answer as it arrives, then its
// tokens, cost, latency and trace. Without it the form posts to the page, which answers the
// same call unstreamed.
"use strict";

(() => {
  const LOG_TRIES = 5;
  const LOG_RETRY_MS = 250;

  function byId(id) {
    return document.getElementById(id);
  }

  function milliseconds(value) {
    if (typeof value !== "number") {
      return "not measured";
    }
    return Math.round(value).toLocaleString("en") + " ms";
  }

  function dollars(value) {
    if (typeof value !== "number") {
      return "not known for this model";
    }
    if (value && value < 0.000001) {
      return "under $0.000001";
    }
    return value ? "$" + value.toFixed(6).replace(/0+$/, "").replace(/\.$/, "") : "$0";
  }

  function tokens(input, output) {
    if (input == null && output == null) {
      return "not reported";
    }
    const count = (n) => (Number.isInteger(n) ? String(n) : "?");
    return count(input) + " in / " + count(output) + " out";
  }

  // A bad JSON value, caught before anything is sent; named as the server names it.
  class FormProblem extends Error {
    constructor(message, field) {
      super(message);
      this.field = field;
    }
  }

  function variables(form) {
    const found = {};
    for (const input of form.querySelectorAll("[data-variable]")) {
      const name = input.dataset.variable;
      const text = input.value.replace(/\r\n/g, "\n");
      if (!text) {
        continue;
      }
      const box = form.elements.namedItem("json:" + name);
      if (!box || !box.checked) {
        found[name] = text;
        continue;
      }
      try {
        found[name] = JSON.parse(text);
      } catch (error) {
        const shown = text.length <= 80 ? text : text.slice(0, 77) + "...";
        throw new FormProblem(
          "Variable '" + name + "' is marked as JSON but is not a JSON value (" + error.message +
            "): got '" + shown + "'. Untick its JSON box to send the text itself",
          input,
        );
      }
    }
    return found;
  }

  function messages(form) {
    const sent = [];
    for (const turn of form.querySelectorAll(".pg-turn")) {
      const role = turn.querySelector("select").value;
      const content = turn.querySelector("textarea").value.replace(/\r\n/g, "\n");
      if (content) {
        sent.push({ role, content });
      }
    }
    const message = byId("pg-message");
    if (message && message.value) {
      sent.push({ role: "user", content: message.value.replace(/\r\n/g, "\n") });
    }
    return sent;
  }

  function requestBody(form) {
    const key = form.dataset.key;
    const version = form.elements.namedItem("version").value;
    const body = {
      model: version ? key + "@" + version : key,
      variables: variables(form),
      messages: messages(form),
      stream: true,
      stream_options: { include_usage: true },
    };
    const model = form.elements.namedItem("model").value;
    if (model) {
      body.model_override = model;
    }
    return body;
  }

  // What the API said, as it said it: its error message, else the status.
  async function apiMessage(response) {
    try {
      const data = await response.json();
      if (data && data.error && data.error.message) {
        return data.error.message;
      }
    } catch (error) {
      // not the API's JSON error
    }
    return "The server answered " + response.status + " " + response.statusText;
  }

  // A turn after the last: `role`, or the one that answers the last turn (a conversation
  // alternates). Its text box, or null when the conversation is full.
  function addTurn(fieldset, button, role, content) {
    const turns = fieldset.querySelectorAll(".pg-turn");
    const max = Number(fieldset.dataset.max);
    if (!turns.length || turns.length >= max) {
      return null;
    }
    const last = turns[turns.length - 1];
    const copy = last.cloneNode(true);
    const index = turns.length;
    const select = copy.querySelector("select");
    const text = copy.querySelector("textarea");
    const labels = copy.querySelectorAll("label");
    select.id = "role-" + index;
    select.name = "role:" + index;
    select.value = role || (last.querySelector("select").value === "user" ? "assistant" : "user");
    text.id = "content-" + index;
    text.name = "content:" + index;
    text.value = content || "";
    labels[0].htmlFor = select.id;
    labels[0].textContent = "Turn " + (index + 1);
    labels[1].htmlFor = text.id;
    labels[1].textContent = "Turn " + (index + 1) + " text";
    last.after(copy);
    if (index + 1 >= max && button) {
      button.hidden = true;
    }
    return text;
  }

  // The answer becomes the assistant's turn (in the last turn, if that was left empty), and
  // an empty user turn follows it.
  function continueConversation(fieldset, button) {
    const answer = byId("pg-output").textContent;
    const turns = fieldset.querySelectorAll(".pg-turn");
    const last = turns[turns.length - 1];
    const lastText = last.querySelector("textarea");
    let reply;
    if (!lastText.value) {
      last.querySelector("select").value = "assistant";
      lastText.value = answer;
      reply = lastText;
    } else {
      reply = addTurn(fieldset, button, "assistant", answer);
    }
    const next = reply ? addTurn(fieldset, button, "user", "") : null;
    (next || reply || lastText).focus();
    byId("pg-continue").parentElement.hidden = true;
  }

  class Run {
    constructor(form) {
      this.form = form;
      this.result = byId("pg-result");
      this.output = byId("pg-output");
      this.problem = byId("pg-problem");
      this.warning = byId("pg-warning");
      this.figures = byId("pg-figures");
      this.runButton = byId("pg-run");
      this.stopButton = byId("pg-stop");
      this.controller = new AbortController();
      this.completionId = null;
      this.usage = null;
      this.started = 0;
      this.firstToken = null;
    }

    // Said once at the start and once at the end, not per chunk, to a screen reader.
    say(text) {
      byId("pg-status").textContent = text;
    }

    reset() {
      this.result.hidden = false;
      this.output.textContent = "";
      this.problem.hidden = true;
      this.problem.textContent = "";
      this.warning.hidden = true;
      this.figures.hidden = true;
      const more = byId("pg-continue");
      if (more) {
        more.parentElement.hidden = true;
      }
      for (const id of ["pg-tokens", "pg-cost", "pg-latency", "pg-ttft", "pg-trace"]) {
        byId(id).textContent = "";
      }
      this.result.setAttribute("aria-busy", "true");
    }

    fail(message) {
      this.problem.textContent = message;
      this.problem.hidden = false;
    }

    async start() {
      let body;
      try {
        body = requestBody(this.form);
      } catch (error) {
        if (!(error instanceof FormProblem)) {
          throw error;
        }
        this.reset();
        this.result.removeAttribute("aria-busy");
        this.fail(error.message);
        error.field.focus();
        return;
      }
      this.reset();
      this.runButton.disabled = true;
      this.stopButton.hidden = false;
      this.say("Running: the answer appears below as it arrives.");
      this.started = performance.now();
      const headers = { "content-type": "application/json", accept: "text/event-stream" };
      headers[this.form.dataset.csrfHeader] = this.form.elements.namedItem("csrf_token").value;
      try {
        const response = await fetch("/v1/chat/completions", {
          method: "POST",
          headers,
          body: JSON.stringify(body),
          credentials: "same-origin",
          signal: this.controller.signal,
        });
        const warning = response.headers.get("x-llmkit-warning");
        if (warning) {
          this.warning.textContent = "Note: " + warning;
          this.warning.hidden = false;
        }
        if (!response.ok) {
          this.fail(await apiMessage(response));
        } else {
          await this.read(response.body.getReader());
        }
      } catch (error) {
        if (error.name === "AbortError") {
          this.fail("Stopped: above is what arrived before the stream was stopped.");
        } else {
          this.fail("The server did not answer: " + error.message);
        }
      } finally {
        this.runButton.disabled = false;
        this.stopButton.hidden = true;
      }
      await this.finish();
    }

    async read(reader) {
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          return;
        }
        buffered += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          for (const line of event.split("\n")) {
            if (line.startsWith("data: ") && this.take(line.slice(6))) {
              return;
            }
          }
        }
      }
    }

    // One event of the stream; true once it is the last.
    take(data) {
      if (data === "[DONE]") {
        return true;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        this.fail(chunk.error.message);
        return true;
      }
      if (chunk.id) {
        this.completionId = chunk.id;
      }
      if (chunk.usage) {
        this.usage = chunk.usage;
      }
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        let text = delta.content || "";
        for (const call of delta.tool_calls || []) {
          const fn = call.function || {};
          text += (fn.name || "") + (fn.arguments || "");
        }
        if (text) {
          if (this.firstToken === null) {
            this.firstToken = performance.now() - this.started;
          }
          this.output.append(document.createTextNode(text));
        }
      }
      return false;
    }

    // The figures: first as the browser saw them, then the run log's own.
    async finish() {
      this.result.removeAttribute("aria-busy");
      const ended = this.problem.hidden ? "" : ": " + this.problem.textContent;
      this.say(ended ? "The run ended" + ended : "The answer is complete.");
      const elapsed = performance.now() - this.started;
      const usage = this.usage || {};
      byId("pg-tokens").textContent = tokens(usage.prompt_tokens, usage.completion_tokens);
      byId("pg-latency").textContent = milliseconds(elapsed) + " (in the browser)";
      const first = this.firstToken;
      byId("pg-ttft").textContent =
        first === null ? "no text arrived" : milliseconds(first) + " (in the browser)";
      byId("pg-cost").textContent = "reading the run log…";
      const found = /^chatcmpl-(\d+)$/.exec(this.completionId || "");
      const trace = byId("pg-trace");
      if (found) {
        const link = document.createElement("a");
        link.href = "/traces/" + found[1];
        link.textContent = "trace " + found[1];
        trace.replaceChildren(link);
      } else if (this.completionId) {
        trace.textContent = this.completionId;
      } else {
        trace.textContent = "none: the call was not made";
      }
      this.figures.hidden = false;
      const more = byId("pg-continue");
      if (more && this.problem.hidden && this.output.textContent) {
        more.parentElement.hidden = false;
      }
      const entry = found ? await this.logEntry(found[1]) : null;
      if (!entry) {
        byId("pg-cost").textContent = found ? "not in the run log yet" : "none";
        return;
      }
      byId("pg-tokens").textContent = tokens(entry.input_tokens, entry.output_tokens);
      byId("pg-cost").textContent = dollars(entry.cost);
      byId("pg-latency").textContent = milliseconds(entry.latency_ms);
      byId("pg-ttft").textContent = milliseconds(entry.ttft_ms);
      trace.append(" (" + entry.status + ")");
    }

    // The call's run-log entry: written as the stream ends, so asked for a few times.
    async logEntry(id) {
      for (let attempt = 0; attempt < LOG_TRIES; attempt += 1) {
        let response;
        try {
          response = await fetch("/v1/ui/logs/" + id, { credentials: "same-origin" });
        } catch (error) {
          return null;
        }
        if (response.ok) {
          return response.json();
        }
        if (response.status !== 404) {
          return null;
        }
        await new Promise((resolve) => setTimeout(resolve, LOG_RETRY_MS));
      }
      return null;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    // Each version has its own variables: the form below is the shown version's until the
    // picked one is loaded.
    const picker = byId("pg-version");
    const shown = picker.value;
    picker.addEventListener("change", () => {
      byId("pg-version-hint").textContent =
        picker.value === shown ? "" : "The form below runs the version shown: load this one first.";
    });
    const form = byId("playground");
    if (!form) {
      return;
    }
    const fieldset = byId("pg-turns");
    const addButton = byId("pg-add-turn");
    if (fieldset && addButton) {
      addButton.addEventListener("click", (event) => {
        event.preventDefault();
        const added = addTurn(fieldset, addButton);
        if (added) {
          added.focus();
        }
      });
    }
    const more = byId("pg-continue");
    if (fieldset && more) {
      more.addEventListener("click", (event) => {
        event.preventDefault();
        continueConversation(fieldset, addButton);
      });
    }
    let running = null;
    byId("pg-stop").addEventListener("click", () => {
      if (running) {
        running.controller.abort();
      }
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (running) {
        return;
      }
      running = new Run(form);
      running.start().finally(() => {
        running = null;
      });
    });
  });
})();
