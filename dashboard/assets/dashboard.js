// safesync dashboard: auto-refresh and selecting dead letters. The pages
// work without it.
(function () {
  "use strict";

  // Auto-refresh: pages that may reload themselves carry data-refresh
  // (seconds). The choice is remembered in this browser; a page hidden in
  // a background tab does not reload.
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  var box = document.getElementById("autorefresh");
  if (seconds > 0 && box) {
    var key = "safesync-dashboard-autorefresh";
    var stored = null;
    try { stored = window.localStorage.getItem(key); } catch (e) { /* storage off */ }
    box.checked = stored === "on";
    box.parentElement.hidden = false;
    box.addEventListener("change", function () {
      try { window.localStorage.setItem(key, box.checked ? "on" : "off"); } catch (e) { /* storage off */ }
    });
    window.setInterval(function () {
      if (box.checked && document.visibilityState === "visible") {
        window.location.reload();
      }
    }, seconds * 1000);
  }

  // Dead letters: "select all", and the buttons that act on a selection
  // enabled only while something is selected.
  var all = document.getElementById("select-all");
  var boxes = Array.prototype.slice.call(document.querySelectorAll('input[type=checkbox][name=id]'));
  var needs = Array.prototype.slice.call(document.querySelectorAll("[data-needs-selection]"));
  function update() {
    var n = boxes.filter(function (b) { return b.checked; }).length;
    needs.forEach(function (b) { b.disabled = n === 0; });
    if (all) {
      all.checked = n > 0 && n === boxes.length;
      all.indeterminate = n > 0 && n < boxes.length;
    }
  }
  if (all) {
    all.hidden = false;
    all.addEventListener("change", function () {
      boxes.forEach(function (b) { b.checked = all.checked; });
      update();
    });
  }
  boxes.forEach(function (b) { b.addEventListener("change", update); });
  update();
})();
