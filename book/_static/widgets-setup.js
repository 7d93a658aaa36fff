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

  // 3. An image that a widget draws (the figure of an interactive control, as the notebook saved it)
  //    arrives without alt text: a notebook cannot attach one to it. Describe it by the controls it
  //    belongs to, so that a screen reader says what it is.
  const describe = (img) => {
    const box = img.closest(".widget-interact") || img.closest(".jupyter-widgets");
    const labels = box
      ? Array.from(box.querySelectorAll(".widget-label"))
          .map((label) => label.textContent.trim())
          .filter(Boolean)
      : [];
    const controls = labels.length ? ` (${labels.join(", ")})` : "";
    return `Figure drawn by the interactive controls${controls} at their initial setting`;
  };
  new MutationObserver(() => {
    for (const img of document.querySelectorAll(".cell_output .jupyter-widgets img")) {
      if (!(img.getAttribute("alt") || "").trim()) img.alt = describe(img);
    }
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
