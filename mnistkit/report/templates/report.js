// Sortable tables: click a header to sort by that column (again: the other way). No libraries.
(function () {
  function cellValue(row, i) {
    var cell = row.cells[i];
    var raw = cell.getAttribute("data-value");
    if (raw === null) raw = cell.textContent.trim();
    var num = parseFloat(raw);
    return isNaN(num) || !/^-?[\d.]/.test(raw) ? raw.toLowerCase() : num;
  }
  function sortBy(table, th, i) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, i), y = cellValue(b, i);
      if (x === "" || y === "") return (x === "") - (y === "");  // empty cells last, either way
      var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () { sortBy(table, th, i); });
      th.title = "click to sort";
    });
  });
})();
