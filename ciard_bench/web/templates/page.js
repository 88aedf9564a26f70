"use strict";
// Sortable tables, filters and drill-down links; no network, no eval, no inline handlers.
(function () {
  function key(cell) {
    var raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null) { raw = cell ? cell.textContent.trim() : ""; }
    if (raw === "" || raw === "--") { return null; }
    var num = Number(raw);
    return isNaN(num) ? raw.toLowerCase() : num;
  }
  function sortBy(table, th) {
    var col = Number(th.getAttribute("data-col"));
    var down = th.getAttribute("aria-sort") !== "descending";
    var heads = table.querySelectorAll("thead th[data-col]");
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", down ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) { return (x === null) - (y === null); }  // missing last
      if (x === y) { return 0; }
      var less = (typeof x === typeof y) ? x < y : String(x) < String(y);
      return (less ? -1 : 1) * (down ? -1 : 1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable thead th[data-col]").forEach(function (th) {
    th.setAttribute("tabindex", "0");
    th.addEventListener("click", function () { sortBy(th.closest("table"), th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th.closest("table"), th); }
    });
  });
  function applyFilters() {
    var chosen = {};
    document.querySelectorAll("select[data-filter]").forEach(function (s) {
      chosen[s.getAttribute("data-filter")] = s.value;
    });
    document.querySelectorAll("tr[data-filterable]").forEach(function (tr) {
      var show = Object.keys(chosen).every(function (k) {
        return chosen[k] === "" || tr.getAttribute("data-" + k) === chosen[k];
      });
      tr.classList.toggle("hidden", !show);
    });
    document.querySelectorAll("[data-count]").forEach(function (el) {
      el.textContent = document.querySelectorAll("tr[data-filterable]:not(.hidden)").length;
    });
  }
  document.querySelectorAll("select[data-filter]").forEach(function (s) {
    s.addEventListener("change", applyFilters);
  });
  if (document.querySelector("select[data-filter]")) { applyFilters(); }
  function openTarget(id) {
    var el = id ? document.getElementById(id) : null;
    if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView(); }
  }
  document.querySelectorAll("a.cell-link").forEach(function (a) {
    a.addEventListener("click", function () { openTarget(a.getAttribute("href").slice(1)); });
  });
  window.addEventListener("hashchange", function () { openTarget(location.hash.slice(1)); });
  if (location.hash) { openTarget(decodeURIComponent(location.hash.slice(1))); }
})();
