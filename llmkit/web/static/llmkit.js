// llmkit's own script, small on purpose: every page works without it. It shows why a sign-in
// was refused on the sign-in page itself, and asks before a form marked data-confirm is sent.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const signIn = document.getElementById("sign-in");
  if (signIn) {
    const problem = document.getElementById("sign-in-error");
    signIn.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.hidden = true;
      let response;
      try {
        response = await fetch(signIn.action, {
          method: "POST",
          body: new URLSearchParams(new FormData(signIn)),
          credentials: "same-origin",
        });
      } catch (error) {
        problem.textContent = "The server did not answer: " + error;
        problem.hidden = false;
        return;
      }
      if (response.ok) {
        window.location.assign(response.url);
        return;
      }
      let message = "Sign-in failed (" + response.status + ")";
      try {
        message = (await response.json()).error.message;
      } catch (error) {
        // not the API's JSON error: keep the status
      }
      problem.textContent = message;
      problem.hidden = false;
      document.getElementById("key").focus();
    });
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
});
