"""Sphinx configuration for the pyro_causalcell documentation.

Build from the repository root::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The build is fully offline: no intersphinx inventories and nothing else is fetched.
"""

from __future__ import annotations

import os
import sys

# Import the package from this checkout even when it is not installed.
sys.path.insert(0, os.path.abspath(".."))

import pyro_causalcell  # noqa: E402

# -- Project -----------------------------------------------------------------------------------
project = "pyro_causalcell"
author = "pyro_causalcell contributors"
copyright = "pyro_causalcell contributors"
version = pyro_causalcell.__version__
release = pyro_causalcell.__version__

# -- General -----------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"
nitpicky = False
default_role = "py:obj"

# -- autodoc / autosummary ---------------------------------------------------------------------
autosummary_generate = True  # pages land in docs/api/generated (git-ignored)
autosummary_generate_overwrite = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"

# -- napoleon (NumPy docstrings) ---------------------------------------------------------------
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = False

# -- HTML --------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"pyro_causalcell {release}"
html_theme_options = {
    "description": "Causal representation learning for single-cell counts, in Pyro",
    "fixed_sidebar": True,
}


# -- numpydoc-style grouped attributes -----------------------------------------------------------
# NumPy docstrings may document several attributes on one line ("domain, label : long tensor").
# napoleon splits such lines in Parameters but not in Attributes, so expand them here, before
# napoleon (priority 500) converts the docstring.
_SECTION_RULE = set("-=")


def _is_header(lines: list[str], i: int) -> bool:
    return (i + 1 < len(lines) and lines[i].strip() != "" and not lines[i].startswith(" ")
            and len(lines[i + 1].strip()) >= 3 and set(lines[i + 1].strip()) <= _SECTION_RULE)


def _split_grouped_attributes(app, what, name, obj, options, lines: list[str]) -> None:
    out: list[str] = []
    i, in_attributes = 0, False
    while i < len(lines):
        line = lines[i]
        if _is_header(lines, i):
            in_attributes = line.strip() == "Attributes"
            out.extend(lines[i:i + 2])
            i += 2
            continue
        head, sep, kind = line.partition(" : ")
        if in_attributes and line[:1] not in ("", " ") and "," in head:
            j = i + 1
            while j < len(lines) and not _is_header(lines, j) and (
                    lines[j].startswith(" ") or (lines[j].strip() == "" and j + 1 < len(lines)
                                                 and lines[j + 1].startswith(" "))):
                j += 1
            for attribute in head.split(","):
                out.append(f"{attribute.strip()}{sep}{kind}".rstrip())
                out.extend(lines[i + 1:j])
            i = j
            continue
        out.append(line)
        i += 1
    lines[:] = out


# -- top-level shortcuts ----------------------------------------------------------------------
# ``pyro_causalcell.fit`` etc. are re-exports; their pages live under the subpackage
# (``pyro_causalcell.infer.fit``). Resolve references to the shortcut names to those pages.
def _shortcut_targets() -> dict[str, str]:
    import importlib

    targets = {}
    for name in getattr(pyro_causalcell, "__all__", []):
        obj = getattr(pyro_causalcell, name, None)
        module = getattr(obj, "__module__", "") or ""
        parts = module.split(".")
        if len(parts) > 1 and parts[0] == "pyro_causalcell":
            subpackage = importlib.import_module(".".join(parts[:2]))
            if name in getattr(subpackage, "__all__", []):
                targets[f"pyro_causalcell.{name}"] = f"{subpackage.__name__}.{name}"
    return targets


_SHORTCUTS = _shortcut_targets()


def _resolve_shortcut(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    module = node.get("py:module") or ""
    for candidate in (target, f"{module}.{target}"):
        if candidate in _SHORTCUTS:
            node["reftarget"] = _SHORTCUTS[candidate]
            return env.get_domain("py").resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], _SHORTCUTS[candidate],
                node, contnode)
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _split_grouped_attributes, priority=400)
    app.connect("missing-reference", _resolve_shortcut)
