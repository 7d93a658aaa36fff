// Set-up for the Jupyter widget manager on pages with widgets. _config.yml (nb_ipywidgets_js) loads
// this file after require.js and before the manager, embed-amd.js.
(function () {
  const here = document.currentScript.src; // .../_static/widgets-setup.js

  // 1. The manager loads its icon fonts from the folder of its RequireJS module. Without this
  //    mapping, RequireJS places the module next to the page and every font request fails.
  window.require.config({
    paths: { "@jupyter-widgets/html-manager/dist": new URL("npm/html-manager", here).href },
  });

  // 2. The widgets typeset their labels with MathJax 2's `MathJax.Hub.Queue`; the book loads
  //    MathJax 3. Translate the call, on the configuration object and on MathJax itself once started.
  const hub = {
    Queue(...jobs) {
      for (const job of jobs) {
        if (Array.isArray(job) && job[0] === "Typeset" && window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise(job[2] ? [job[2]] : undefined).catch(console.error);
        }
      }
    },
  };
  const config = (window.MathJax = window.MathJax || {});
  config.Hub = hub;
  const startup = (config.startup = config.startup || {});
  const ready = startup.ready;
  startup.ready = function () {
    if (ready) ready(); else window.MathJax.startup.defaultReady();
    window.MathJax.Hub = hub;
  };
})();
