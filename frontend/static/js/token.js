// The access token for a server started with API_TOKEN. Asked for only when a
// request answers 401, then kept in localStorage for the next visits.
import { el } from "./dom.js";

const STORAGE_KEY = "dalle-playground.api-token";
let pendingQuestion = null;

export function savedToken() {
  return localStorage.getItem(STORAGE_KEY) ?? "";
}

function buildDialog(message) {
  const input = el("input", { id: "api-token", name: "token", type: "password", autocomplete: "off", required: true });
  // Cancel is not a submit button: Enter in the field submits with the form's first one.
  const cancel = el("button", { type: "button", onclick: () => dialog.close("cancel") }, "Cancel");
  const dialog = el("dialog", { class: "token-dialog", "aria-labelledby": "token-title" },
    el("form", { method: "dialog" },
      el("h2", { id: "token-title" }, "Access token needed"),
      el("p", {}, message),
      el("div", { class: "field" }, el("label", { for: "api-token" }, "Token"), input),
      el("div", { class: "dialog-actions" },
        cancel,
        el("button", { type: "submit", value: "save", class: "primary" }, "Save token"))));
  return { dialog, input };
}

// Resolves to the new token, or null when the user cancels. Concurrent requests
// that all got 401 share one question.
export function askForToken(rejected) {
  if (pendingQuestion) return pendingQuestion;
  const message = rejected
    ? "The saved token was not accepted. Enter the API_TOKEN this playground was started with."
    : "This playground only accepts changes with its access token (API_TOKEN).";
  const { dialog, input } = buildDialog(message);
  document.body.append(dialog);
  pendingQuestion = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const token = dialog.returnValue === "save" ? input.value.trim() : "";
      dialog.remove();
      pendingQuestion = null;
      if (token) localStorage.setItem(STORAGE_KEY, token);
      resolve(token || null);
    });
  });
  dialog.showModal();
  return pendingQuestion;
}
