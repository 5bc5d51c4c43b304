// popoto.dashboard: live job progress. Polls <base>/api/jobs for the jobs on the page
// that are not finished yet and updates their rows; text only (textContent), never HTML.
(function () {
  "use strict";
  var base = document.body.getAttribute("data-base") || "";
  var INTERVAL = 1000;

  function pending() {
    var rows = document.querySelectorAll("tr[data-job][data-final='no']");
    var ids = [];
    rows.forEach(function (row) { ids.push(row.getAttribute("data-job")); });
    return ids;
  }

  function setText(row, field, text) {
    var el = row.querySelector("[data-field='" + field + "']");
    if (el) { el.textContent = text; }
    return el;
  }

  function update(job) {
    document.querySelectorAll("tr[data-job]").forEach(function (row) {
      if (row.getAttribute("data-job") !== job.id) { return; }
      var status = setText(row, "status", job.status);
      if (status) { status.className = "status status-" + job.status; }
      setText(row, "phase", job.phase);
      setText(row, "percent", Math.round(job.percent) + "%");
      setText(row, "counts", job.done + "/" + job.total);
      setText(row, "error", job.error || "");
      var bar = row.querySelector("[data-field='bar']");
      if (bar) { bar.value = job.percent; }
      row.setAttribute("data-final", job.final ? "yes" : "no");
    });
  }

  function poll() {
    var ids = pending();
    if (!ids.length) { return; }
    var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
    fetch(base + "/api/jobs?" + query, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : {jobs: []}; })
      .then(function (body) { body.jobs.forEach(update); })
      .catch(function () {})
      .then(function () { window.setTimeout(poll, INTERVAL); });
  }

  window.setTimeout(poll, INTERVAL);
}());
