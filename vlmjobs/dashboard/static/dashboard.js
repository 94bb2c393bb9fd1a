// Live updates without a framework: every element with data-poll="URL" re-fetches that
// URL's HTML fragment and swaps it in. A response with "X-Poll-Stop: 1" (the job ended)
// ends the polling of that element; a failed fetch retries at the next tick.
(function () {
  "use strict";
  var every = 2000;

  function poll(el) {
    var url = el.getAttribute("data-poll");
    var timer = setInterval(function () {
      fetch(url, { headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (!r.ok) { return null; }
          if (r.headers.get("X-Poll-Stop") === "1") { clearInterval(timer); }
          return r.text();
        })
        .then(function (html) { if (html !== null) { el.innerHTML = html; } })
        .catch(function () { /* server restarting: try again next tick */ });
    }, every);
  }

  // An overlay whose source moved or was deleted: say so instead of a broken image.
  function fallback(img) {
    var note = document.createElement("div");
    note.className = "noimage";
    note.textContent = img.getAttribute("data-fallback");
    img.replaceWith(note);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var els = document.querySelectorAll("[data-poll]");
    for (var i = 0; i < els.length; i++) { poll(els[i]); }
    var imgs = document.querySelectorAll("img[data-fallback]");
    for (var j = 0; j < imgs.length; j++) {
      if (imgs[j].complete && imgs[j].naturalWidth === 0) { fallback(imgs[j]); }
      else { imgs[j].addEventListener("error", fallback.bind(null, imgs[j])); }
    }
  });
})();
