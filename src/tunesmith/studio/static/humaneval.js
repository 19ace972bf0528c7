// Keyboard shortcuts for the rating and labelling screens: a key pressed outside a text box
// clicks the button with that data-key (htmx posts the form with the button's value);
// Ctrl/Cmd+Enter in the answer box saves it. Nothing is stored in the browser: each click
// is saved on the server before the next item arrives.
(function () {
  function form() {
    var f = document.querySelector("form[data-shortcuts]");
    // a key pressed just after a new item was swapped in may come before htmx has bound the
    // new form: bind it now (idempotent), so the answer is posted, never submitted natively
    if (f && window.htmx) window.htmx.process(f);
    return f;
  }
  document.addEventListener("keydown", function (ev) {
    var f = form();
    if (!f || ev.altKey || ev.repeat) return;
    var typing = ev.target && (ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT");
    if (typing) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && ev.target.hasAttribute("data-save-key")) {
        ev.preventDefault();
        var save = f.querySelector("#save-answer");
        if (save) save.click();
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey) return;
    var button = f.querySelector('button[data-key="' + ev.key.toLowerCase() + '"]');
    if (button && !button.disabled) {
      ev.preventDefault();
      f.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      button.disabled = false;
      button.click();
    }
  });
  // buttons are re-enabled whenever a new item (or an error) is swapped in
  document.addEventListener("htmx:afterSwap", function () {
    var f = form();
    if (f) f.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
  });
})();
