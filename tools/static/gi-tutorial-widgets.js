/* gi-tutorial: set-up for the vendored Jupyter widget manager (loaded between require.js and embed-amd.js).
 * 1. The widget bundle finds its icon fonts next to its AMD module; map that module to the vendored
 *    copy beside this file, so the fonts load from the book itself.
 * 2. ipywidgets typesets widget labels with MathJax 2's API (MathJax.Hub.Queue); the book uses
 *    MathJax 3. Provide that one call on top of MathJax 3's typesetPromise. */
(function () {
  var here = document.currentScript && document.currentScript.src;
  var base = here ? here.slice(0, here.lastIndexOf("/") + 1) : "";
  if (window.require && window.require.config) {
    window.require.config({paths: {"@jupyter-widgets/html-manager/dist": base + "jupyter-widgets"}});
  }
  function shim() {
    var mj = window.MathJax;
    if (mj && !mj.Hub && mj.version) {
      mj.Hub = {Queue: function (job) {
        var element = job && job[2];
        if (mj.typesetPromise) { mj.typesetPromise(element ? [element] : undefined).catch(function () {}); }
      }};
    }
  }
  shim();
  document.addEventListener("DOMContentLoaded", shim);
  window.addEventListener("load", shim);
})();
