// A token in the URL fragment (`/login#token=slw_…`, never sent to the server or kept in
// its logs) is posted once through the form, then removed from the address bar: scripts
// and headless browsers can sign in without typing.
(function () {
  var m = /^#token=(.+)$/.exec(window.location.hash);
  if (!m) { return; }
  var form = document.getElementById("login");
  form.elements.token.value = decodeURIComponent(m[1]);
  history.replaceState(null, "", window.location.pathname + window.location.search);
  form.submit();
}());
