// The review station's only script: keyboard shortcuts, the overlay's opacity, and the queue's
// counts (fetched after the page, which need not wait for them). No framework, nothing fetched
// from elsewhere (the page's Content-Security-Policy allows only this origin).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const counts = document.querySelector("p.counts[data-src]");
  if (counts) {
    // The fragment is the station's own page, autoescaped on the server.
    fetch(counts.dataset.src, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(String(r.status)))))
      .then((html) => { counts.innerHTML = html; })
      .catch(() => { counts.textContent = "Counts unavailable."; });
  }
  const view = document.querySelector(".inspection");
  const overlay = document.querySelector(".overlay");
  const slider = document.querySelector(".opacity");
  if (overlay && slider) {
    const apply = () => { overlay.style.opacity = String(Number(slider.value) / 100); };
    slider.addEventListener("input", apply);
    apply();
  }
  if (!view) return;
  const form = document.querySelector("form.labelling");
  const submit = (value) => {
    if (!form) return;
    const button = form.querySelector(`button[value="${value}"]`);
    if (button) form.requestSubmit(button);
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = e.target instanceof HTMLInputElement && e.target.type !== "range";
    if (typing) return;
    const key = e.key.toLowerCase();
    if (key === "n") submit("normal");
    else if (key === "a") submit("anomalous");
    else if ((key === "j" || e.key === "ArrowRight") && view.dataset.next) location.href = view.dataset.next;
    else if ((key === "k" || e.key === "ArrowLeft") && view.dataset.previous) location.href = view.dataset.previous;
    else return;
    e.preventDefault();
  });
});
