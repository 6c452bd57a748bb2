// Small behaviours htmx leaves to the page (no inline scripts: the CSP forbids them).
document.addEventListener("htmx:afterRequest", function (event) {
  var form = event.detail.elt;
  if (event.detail.successful && form.matches && form.matches("form.reply")) {
    var body = form.querySelector("textarea");
    if (body) { body.value = ""; body.focus(); }
  }
});
document.addEventListener("htmx:responseError", function (event) {
  var flash = document.getElementById("flash");
  if (!flash) { return; }
  var text = "The request failed (" + event.detail.xhr.status + ").";
  try {
    var doc = new DOMParser().parseFromString(event.detail.xhr.responseText, "text/html");
    var alert = doc.querySelector("main [role=alert]:not(#flash)");
    if (alert && alert.textContent.trim()) { text = alert.textContent.trim(); }
  } catch (e) { /* keep the generic text */ }
  flash.textContent = text;
  flash.hidden = false;
});
// The phone thread opens at its newest message and stays there as it refreshes every
// 2 s, unless the reader scrolled up to read older ones; a reply just sent is in view.
(function () {
  var atEnd = true;
  var top = 0;
  function chat() { return document.querySelector("#thread .chat"); }
  function settle() {
    var list = chat();
    if (list) { list.scrollTop = atEnd ? list.scrollHeight : top; }
  }
  document.addEventListener("DOMContentLoaded", settle);
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (elt && elt.matches && elt.matches("form.reply")) { atEnd = true; return; }
    var list = chat();
    if (list) {
      atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      top = list.scrollTop;
    }
  });
  document.addEventListener("htmx:afterSettle", settle);
})();
