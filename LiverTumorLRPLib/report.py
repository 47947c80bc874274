"""The one HTML shell of the reports (cohort ``report.html``, validation ``report.html``)."""
from __future__ import annotations

import html

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")


def html_page(title: str, parts) -> str:
    """A complete, self-contained HTML page: ``title`` as its title and heading, then the HTML ``parts``."""
    t = html.escape(title)
    return "\n".join([f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title>",
                      f"<style>{STYLE}</style></head><body>", f"<h1>{t}</h1>", *parts, "</body></html>"])
