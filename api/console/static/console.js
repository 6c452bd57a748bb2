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
