// oprun dashboard: progressive only. Every read and action works without it.
// - <time datetime> shows the viewer's local time (UTC stays on hover);
// - <main data-live="N"> re-reads the page every N seconds while live runs show;
// - forms with data-confirm ask before they post.
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = d.toLocaleString(); }
    });
  }
  function live() {
    var main = document.querySelector("main[data-live]");
    if (!main) { return; }
    var every = Math.max(2, parseInt(main.getAttribute("data-live"), 10) || 5) * 1000;
    setTimeout(function refresh() {
      fetch(location.href, { credentials: "same-origin" }).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (text) {
        if (!text) { return; }
        var next = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        if (!next) { return; }
        main.innerHTML = next.innerHTML;
        localTimes(main);
        if (next.hasAttribute("data-live")) { setTimeout(refresh, every); } else { main.removeAttribute("data-live"); }
      }).catch(function () { setTimeout(refresh, every * 2); });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    live();
  });
})();
