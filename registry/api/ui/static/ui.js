// model-registry web UI: progressive enhancement only; every page reads and works without it.
// 1. Filter as you type: an input with data-live="#id" reloads that part of the page from its
//    own form's GET answer (the same page the form would load), debounced.
// 2. Copy buttons on code snippets.
"use strict";
(function () {
  function live(input) {
    var target = document.querySelector(input.getAttribute("data-live"));
    var form = input.form;
    if (!target || !form) return;
    var timer = null;
    var sent = 0;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var url = new URL(form.action, window.location.href);
        new FormData(form).forEach(function (value, key) {
          if (value) url.searchParams.set(key, value);
        });
        var mine = ++sent;
        fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
          .then(function (answer) { return answer.ok ? answer.text() : null; })
          .then(function (html) {
            if (html === null || mine !== sent) return;
            var fresh = new DOMParser().parseFromString(html, "text/html")
              .querySelector(input.getAttribute("data-live"));
            if (fresh) {
              target.replaceChildren.apply(target, Array.from(fresh.childNodes));
              window.history.replaceState(null, "", url);
            }
          })
          .catch(function () { /* the form still works: submit it */ });
      }, 180);
    });
  }
  function copyButtons() {
    if (!navigator.clipboard) return;
    document.querySelectorAll("pre.snippet").forEach(function (block) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(block.innerText.replace(/\nCopy$/, "")).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        });
      });
      block.appendChild(button);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-live]").forEach(live);
    copyButtons();
  });
})();
