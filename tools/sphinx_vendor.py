"""Sphinx extension: serve the vendored MathJax and widget JavaScript from the built book itself.

Loaded from ``_config.yml`` (``sphinx.local_extensions``). It copies ``vendor/`` (written
by ``make vendor``, see ``tools/vendor_js.py``) into the site's ``_static/`` and points
MathJax (``mathjax_path``) and myst-nb's widget manager (``nb_ipywidgets_js``) at those
copies, so a page renders its math and saved widgets with no network, offline or on the
public site alike. The folder is added here rather than through ``_static/``, because
Jupyter Book adds every ``.js`` under a ``_static/`` folder to every page.
"""

from __future__ import annotations

import json
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "vendor"
OWN_STATIC = Path(__file__).resolve().parent / "static"  # the book's own small scripts

MATHJAX = "mathjax/tex-chtml.js"
REQUIREJS = "requirejs/require.js"
WIDGETS = "jupyter-widgets/embed-amd.js"
WIDGETS_SETUP = "gi-tutorial-widgets.js"  # font path and MathJax 3 shim for the widget manager


def _configure(app, config) -> None:
    manifest = VENDOR / "MANIFEST.json"
    if not manifest.exists():
        from sphinx.errors import ConfigError

        raise ConfigError(f"{manifest} is missing: run `make vendor` to fetch MathJax and the widget manager")
    json.loads(manifest.read_text())  # a readable manifest, or fail here
    config.html_static_path = list(config.html_static_path) + [str(VENDOR), str(OWN_STATIC)]
    config.mathjax_path = MATHJAX
    # myst-nb adds these scripts, in this order, to pages that hold saved widget state (under _static/)
    config.nb_ipywidgets_js = {REQUIREJS: {}, WIDGETS_SETUP: {}, WIDGETS: {}}


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    """Drop exact duplicates of a script (sphinx-thebe adds its inline configuration twice, which is a
    SyntaxError in the browser: "Identifier 'THEBE_JS_URL' has already been declared")."""
    scripts, seen = [], set()
    for script in context.get("script_files", []):
        if isinstance(script, str):
            key = (script, "")
        else:  # the same file or inline body, whatever its priority
            key = (str(script.filename or ""), repr(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts


def setup(app):
    app.connect("config-inited", _configure, priority=100)  # before myst-nb reads its settings
    app.connect("html-page-context", _unique_scripts, priority=900)  # after every extension added its scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
